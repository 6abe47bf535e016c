"""The tiny world end to end: data -> frozen backbones -> stage 1 (``train.py`` under ``torchrun``) ->
the paper's curation loop (the stage-1 model makes its own stage-2 set) -> stage 2 on the ground-truth
descriptions and stage 2 on the curated set -> evaluation of the control (projection at initialisation),
stage 1, stage 2 and stage 2 (curated) on the held-out images. After stage 1, work runs two at a time on
the two cores: stage 2 (ground truth) trains while the curation runs, stage 2 (curated) while the control
and stage 1 are evaluated."""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

from minigpt4.common.shipped import config_file
from minigpt4.tiny_world.backbones import build_backbones, folder
from minigpt4.tiny_world.jobs import Job, cpu_seconds, run_jobs, torchrun
from minigpt4.tiny_world.write import write_world

CONFIGS = {"stage1": config_file("train_configs/tiny_stage1.yaml"),
           "stage2": config_file("train_configs/tiny_stage2.yaml"), "eval": config_file("eval_configs/tiny_eval.yaml")}
JOB = "tiny"
METRICS = ("attribute_accuracy", "malformed_rate", "description_accuracy")
MODELS = ("control", "stage1", "stage2", "stage2_curated")


def model_paths(out: Path) -> dict:
    vision = folder(out, "vision")
    return {"model.vit_ckpt": str(vision / "eva_vit.pth"), "model.q_former_model": str(vision / "blip2_qformer.pth"),
            "model.llama_model": str(folder(out, "lm"))}


def latest_checkpoint(job_dir: Path) -> Path:
    found = sorted(job_dir.glob("checkpoint_*.safetensors"),
                   key=lambda p: [int(x) for x in re.findall(r"\d+", p.stem)] or [-1])
    if not found:
        raise FileNotFoundError(f"{job_dir}: train.py wrote no checkpoint_*.safetensors")
    return found[-1]


def stage_job(out: Path, preset, run: str, nproc: int, *, data: Path | None = None, ckpt: Path | None = None) -> Job:
    """``train.py`` for one run (``stage1``, ``stage2`` or ``stage2_curated``) under torchrun, as a :class:`Job`
    whose output goes to ``runs/<run>/train.log``."""
    stage = "stage1" if run == "stage1" else "stage2"
    run_dir = Path(out) / "runs" / run
    shutil.rmtree(run_dir / JOB, ignore_errors=True)
    from omegaconf import OmegaConf

    schedule = dict(getattr(preset, stage))
    run_cfg = OmegaConf.merge(OmegaConf.load(CONFIGS[stage]).run,
                              {k.split(".", 1)[1]: v for k, v in schedule.items() if k.startswith("run.")})
    if nproc != 2:  # the configs' batch sizes are per process for 2 processes: keep the global batch
        schedule["run.batch_size_train"] = int(run_cfg.batch_size_train) * 2 // nproc
    total = int(run_cfg.max_epoch) * int(run_cfg.iters_per_epoch)
    options = {**model_paths(out), **preset.model_options(), **schedule,
               "run.output_dir": str(run_dir), "run.job_id": JOB, "run.threads": 1, "run.progress_bar": False,
               "run.log_freq": 20}
    if stage == "stage1":
        options["datasets.laion.build_info.storage"] = str(data or Path(out) / "data" / "laion")
    else:
        options["datasets.cc_sbu_align.build_info.storage"] = str(data or Path(out) / "data" / "cc_sbu_align")
        options["model.ckpt"] = str(ckpt)
    args = ["--cfg-path", str(CONFIGS[stage]), "--overwrite", "--options", *[f"{k}={v}" for k, v in options.items()]]
    return Job(name=run, cmd=torchrun(nproc, args), log_path=run_dir / "train.log", total=total)


def load_model(out: Path, preset, ckpt: Path | None, seed: int = 42):
    """The eval config's model with this run's paths; ``ckpt=None`` keeps the projection at initialisation."""
    import torch

    from minigpt4.common.config import Config
    from minigpt4.models.minigpt4 import MiniGPT4
    from minigpt4.processors import build_processor

    options = {**model_paths(out), **preset.model_options(), "model.ckpt": str(ckpt) if ckpt else None}
    cfg = Config.load(CONFIGS["eval"], options=[f"{k}={'null' if v is None else v}" for k, v in options.items()])
    torch.manual_seed(seed)  # a fixed, reproducible initialisation of llama_proj (the control)
    model = MiniGPT4.from_config(cfg.model_cfg, device="cpu")
    processor = build_processor(cfg.config.datasets.cc_sbu_align.vis_processor.train)
    return model, processor


def evaluate_stage(out: Path, preset, name: str, ckpt: Path | None, model=None, processor=None) -> dict:
    from minigpt4.tiny_world.evaluate import evaluate, write_json

    if model is None:
        model, processor = load_model(out, preset, ckpt)
    result = evaluate(model, processor, Path(out) / "data" / "eval" / "test.jsonl", limit=preset.eval_images)
    result["checkpoint"] = str(ckpt) if ckpt else None
    (Path(out) / "eval").mkdir(parents=True, exist_ok=True)
    write_json(Path(out) / "eval" / f"{name}.json", result)
    return result


def table(results: dict) -> str:
    lines = [f"{'':15s} {'attribute acc':>14s} {'malformed':>10s} {'description acc':>16s}"]
    for name, r in results.items():
        lines.append(f"{name:15s} {r['attribute_accuracy']:14.3f} {r['malformed_rate']:10.3f} "
                     f"{r['description_accuracy']:16.3f}")
    return "\n".join(lines)


class Clock:
    """Wall and CPU seconds (this process and its children) per phase."""

    def __init__(self):
        self.t0, self.c0 = time.perf_counter(), cpu_seconds()
        self.last = (self.t0, self.c0)
        self.wall, self.cpu = {}, {}

    def mark(self, phase: str) -> None:
        now, cpu = time.perf_counter(), cpu_seconds()
        self.wall[phase], self.cpu[phase] = now - self.last[0], cpu - self.last[1]
        self.last = (now, cpu)

    def totals(self) -> tuple[float, float]:
        return time.perf_counter() - self.t0, cpu_seconds() - self.c0


def run(out: Path, preset, nproc: int = 2, log=print) -> dict:
    import torch

    from minigpt4.tiny_world.curation import curate_stage2_set
    from minigpt4.tiny_world.page import write_page

    torch.set_num_threads(1)  # this process's model work is small: one thread, next to a training process
    try:  # the tiny backbones load in milliseconds: no "Loading weights" bars
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    clock = Clock()
    out = Path(out).resolve()  # child processes get absolute paths
    out.mkdir(parents=True, exist_ok=True)
    log(f"[tiny world] data -> {out / 'data'}")
    write_world(out / "data", preset.data)
    clock.mark("data")
    backbones = build_backbones(out, preset)
    clock.mark("backbones")
    run_jobs([stage_job(out, preset, "stage1", nproc)], "stage 1: train.py under torchrun")
    ckpt1 = latest_checkpoint(out / "runs" / "stage1" / JOB)
    clock.mark("stage1")
    # Two cores, four things left to do: stage 2 (ground truth) trains in its own process while this one
    # curates; stage 2 (curated) trains while this one evaluates the control and stage 1.
    ground_truth = stage_job(out, preset, "stage2", 1, ckpt=ckpt1).start()
    curated_job = None
    try:
        log("[tiny world] curation (python -m minigpt4.curate): the stage-1 model describes the stage-2 training "
            "images, while stage 2 (ground truth) trains")
        model1, processor = load_model(out, preset, ckpt1)
        curated, curation = curate_stage2_set(out / "data" / "cc_sbu_align" / "image", out / "curate", model1,
                                              processor, review=preset.review, num_images=preset.curate_images,
                                              batch_size=preset.curate_batch)
        log(f"[tiny world] curation kept {curation['kept']} of {curation['described']} descriptions -> {curated}")
        clock.mark("curation")
        if curation["kept"] < preset.stage2_batch():
            raise RuntimeError(f"the curation kept {curation['kept']} descriptions, fewer than one stage-2 batch "
                               f"({preset.stage2_batch()}); see {out / 'curate'}")
        curated_job = stage_job(out, preset, "stage2_curated", 1, ckpt=ckpt1, data=curated).start()
        results = {}
        for name, ckpt in (("control", None), ("stage1", ckpt1)):
            log(f"[tiny world] evaluate {name}, while stage 2 trains")
            results[name] = evaluate_stage(out, preset, name, ckpt, *((model1, processor) if ckpt else ()))
        run_jobs([ground_truth, curated_job], "stage 2 (ground truth) + stage 2 (curated)")
    finally:
        for job in (ground_truth, curated_job):
            if job is not None and job.proc.poll() is None:
                job.proc.terminate()
                job.proc.wait()
    ckpts = {"stage1": ckpt1, **{j.name: latest_checkpoint(out / "runs" / j.name / JOB)
                                 for j in (ground_truth, curated_job)}}
    clock.mark("stage2")
    for name in ("stage2", "stage2_curated"):
        log(f"[tiny world] evaluate {name}")
        results[name] = evaluate_stage(out, preset, name, ckpts[name])
    clock.mark("evaluation")
    curves = {name: out / "runs" / name / JOB / "curves.png" for name in ("stage1", "stage2", "stage2_curated")}
    page = write_page(out / "report.html", results, out / "data" / "eval", curves=curves, curation=curation)
    seconds, cpu = clock.totals()
    report = {name: {k: v for k, v in r.items() if k != "samples"} for name, r in results.items()}
    report.update(seconds=seconds, cpu_seconds=cpu, timings=clock.wall, cpu_timings=clock.cpu, preset=preset.name,
                  curation=curation,
                  backbones={k: {"steps": v["steps"], "parameters": v["parameters"],
                                 "check": v["history"][-1] if v["history"] else None} for k, v in backbones.items()},
                  checkpoints={k: str(v) for k, v in ckpts.items()},
                  curves={k: str(v) for k, v in curves.items() if v.exists()})
    (out / "report.json").write_text(json.dumps(report, indent=1))
    log("\n" + table(results))
    log(f"\ntotal {seconds:.0f} s wall, {cpu:.0f} s CPU  ("
        + ", ".join(f"{k} {clock.wall[k]:.0f}/{clock.cpu[k]:.0f} s" for k in clock.wall) + ")")
    log(f"report:  {out / 'report.json'}\npage:    {page}\ncurves:  "
        + ", ".join(str(p) for p in curves.values() if p.exists()))
    log(f"demo checkpoint (eval_configs/tiny_eval.yaml model.ckpt): {ckpts['stage2']}")
    return report
