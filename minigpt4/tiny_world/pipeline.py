"""The tiny world end to end: data -> frozen backbones -> stage 1 -> stage 2 (both through ``train.py``, i.e.
``minigpt4.train``, under ``torchrun``) -> evaluation of the control (projection at initialisation), stage 1
and stage 2."""
from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from minigpt4.common.shipped import config_file
from minigpt4.tiny_world.backbones import build_backbones, folder
from minigpt4.tiny_world.jobs import child_env
from minigpt4.tiny_world.write import write_world

CONFIGS = {"stage1": config_file("train_configs/tiny_stage1.yaml"),
           "stage2": config_file("train_configs/tiny_stage2.yaml"), "eval": config_file("eval_configs/tiny_eval.yaml")}
JOB = "tiny"
METRICS = ("attribute_accuracy", "malformed_rate", "description_accuracy")


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_stage(out: Path, preset, stage: str, nproc: int, ckpt: Path | None = None) -> Path:
    """Run ``train.py`` for one stage under torchrun; returns the last checkpoint it wrote."""
    run_dir = Path(out) / "runs" / stage
    shutil.rmtree(run_dir / JOB, ignore_errors=True)
    options = {**model_paths(out), **preset.model_options(), **getattr(preset, stage),
               "run.output_dir": str(run_dir), "run.job_id": JOB, "run.threads": 1}
    if stage == "stage1":
        options["datasets.laion.build_info.storage"] = str(Path(out) / "data" / "laion")
    else:
        options["datasets.cc_sbu_align.build_info.storage"] = str(Path(out) / "data" / "cc_sbu_align")
        options["model.ckpt"] = str(ckpt)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
           str(free_port()), "--module", "minigpt4.train", "--cfg-path", str(CONFIGS[stage]),
           "--options", *[f"{k}={v}" for k, v in options.items()]]
    result = subprocess.run(cmd, env=child_env())
    if result.returncode != 0:
        raise RuntimeError(f"{stage}: train.py exited with {result.returncode}")
    return latest_checkpoint(run_dir / JOB)


def load_model(out: Path, preset, ckpt: Path | None, seed: int = 42):
    """The eval config's model with this run's paths; ``ckpt=None`` keeps the projection at initialisation."""
    from minigpt4.common.config import Config
    from minigpt4.models.minigpt4 import MiniGPT4
    from minigpt4.processors import build_processor

    options = {**model_paths(out), **preset.model_options(), "model.ckpt": str(ckpt) if ckpt else None}
    cfg = Config.load(CONFIGS["eval"], options=[f"{k}={'null' if v is None else v}" for k, v in options.items()])
    torch.manual_seed(seed)  # a fixed, reproducible initialisation of llama_proj (the control)
    model = MiniGPT4.from_config(cfg.model_cfg, device="cpu")
    processor = build_processor(cfg.config.datasets.cc_sbu_align.vis_processor.train)
    return model, processor


def evaluate_stage(out: Path, preset, name: str, ckpt: Path | None, threads: int = 2) -> dict:
    from minigpt4.tiny_world.evaluate import evaluate, write_json

    torch.set_num_threads(threads)
    model, processor = load_model(out, preset, ckpt)
    result = evaluate(model, processor, Path(out) / "data" / "eval" / "test.jsonl", limit=preset.eval_images)
    result["checkpoint"] = str(ckpt) if ckpt else None
    (Path(out) / "eval").mkdir(parents=True, exist_ok=True)
    write_json(Path(out) / "eval" / f"{name}.json", result)
    return result


def table(results: dict) -> str:
    lines = [f"{'':10s} {'attribute acc':>14s} {'malformed':>10s} {'description acc':>16s}"]
    for name, r in results.items():
        lines.append(f"{name:10s} {r['attribute_accuracy']:14.3f} {r['malformed_rate']:10.3f} "
                     f"{r['description_accuracy']:16.3f}")
    return "\n".join(lines)


def run(out: Path, preset, nproc: int = 2, log=print) -> dict:
    from minigpt4.tiny_world.evaluate import write_html

    t0 = time.perf_counter()
    out = Path(out).resolve()  # child processes get absolute paths
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    log(f"[tiny world] data -> {out / 'data'}")
    write_world(out / "data", preset.data)
    timings["data"] = time.perf_counter() - t0
    log("[tiny world] frozen backbones (built once, then reused)")
    backbones = build_backbones(out, preset)
    timings["backbones"] = time.perf_counter() - t0 - sum(timings.values())
    results = {}
    log("[tiny world] stage 1: train.py under torchrun")
    ckpt1 = train_stage(out, preset, "stage1", nproc)
    timings["stage1"] = time.perf_counter() - t0 - sum(timings.values())
    log("[tiny world] stage 2: train.py under torchrun")
    ckpt2 = train_stage(out, preset, "stage2", nproc, ckpt1)
    timings["stage2"] = time.perf_counter() - t0 - sum(timings.values())
    for name, ckpt in (("control", None), ("stage1", ckpt1), ("stage2", ckpt2)):
        log(f"[tiny world] evaluate {name}")
        results[name] = evaluate_stage(out, preset, name, ckpt)
    timings["evaluation"] = time.perf_counter() - t0 - sum(timings.values())
    curves = {s: Path("runs") / s / JOB / "curves.png" for s in ("stage1", "stage2")
              if (out / "runs" / s / JOB / "curves.png").exists()}
    page = write_html(out / "report.html", results, out / "data" / "eval", curves=curves)
    seconds = time.perf_counter() - t0
    report = {name: {k: v for k, v in r.items() if k != "samples"} for name, r in results.items()}
    report.update(seconds=seconds, timings=timings, preset=preset.name,
                  backbones={k: {"steps": v["steps"], "parameters": v["parameters"],
                                 "check": v["history"][-1] if v["history"] else None} for k, v in backbones.items()},
                  checkpoints={"stage1": str(ckpt1), "stage2": str(ckpt2)})
    (out / "report.json").write_text(json.dumps(report, indent=1))
    log("\n" + table(results))
    log(f"\ntotal {seconds:.0f} s  ({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())})")
    curve_files = ', '.join(str(out / p) for p in curves.values()) or '-'
    log(f"report:  {out / 'report.json'}\npage:    {page}\ncurves:  {curve_files}")
    log(f"demo checkpoint (eval_configs/tiny_eval.yaml model.ckpt): {ckpt2}")
    return report
