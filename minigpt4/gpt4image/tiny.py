"""The offline GPT4Image demonstration on the tiny world, with no download:

    python -m minigpt4.gpt4image.tiny --out gpt4image_tiny [--tiny-world tiny_world]

1. a classification split drawn from the tiny world's scene generator (label: the leftmost object's shape;
   ``tiny_split.py``): a small training set and a held-out test set;
2. the tiny world's stage-2 MiniGPT-4 describes every training image through the caption CLI, once with
   ``Describe this image in detail.`` and once class-conditioned (``Describe this {label} in detail.``);
3. the offline text encoder embeds the descriptions (``python -m minigpt4.gpt4image.embed``);
4. a narrow ResNet-10-T and a tiny ViT are trained through ``train.py``'s code path
   (``train_configs/gpt4image_tiny_{cnn,vit}.yaml``) as ``baseline`` (lambda 0), ``aligned`` (lambda 0.3),
   ``aligned_class`` (lambda 0.3, class-conditioned descriptions) and ``shuffled`` (lambda 0.3, every image
   aligned to ANOTHER image's description), 3 seeds each; the same seed gives the same initial backbone;
5. every exported classifier (plain timm, no projection head) is scored on the held-out test split once,
   after its last epoch (no selection on the test split); ``report.json`` and ``report.html`` are written.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from minigpt4.common.shipped import config_file
from minigpt4.errors import UsageError, out_folder, path_arg, run_cli

log = logging.getLogger("minigpt4.gpt4image.tiny")

CONFIGS = {"cnn": config_file("train_configs/gpt4image_tiny_cnn.yaml"),
           "vit": config_file("train_configs/gpt4image_tiny_vit.yaml")}
VARIANTS = ("baseline", "aligned", "aligned_class", "shuffled")
PROMPTS = {"plain": "Describe this image in detail.", "class": "Describe this {label} in detail."}
WORLD_HINT = "build it with: python -m minigpt4.tiny_world --out {path} (about 11 minutes on 2 CPU cores)"


def world_files(world: Path) -> dict:
    """The tiny world's model files as caption-CLI options; a one-line error naming what is missing."""
    from minigpt4.tiny_world.pipeline import JOB, latest_checkpoint, model_paths

    options = model_paths(world)
    stage2 = world / "runs" / "stage2" / JOB
    for key, path in options.items():
        if not Path(path).exists():
            raise UsageError(f"--tiny-world {world}: {path} is missing; {WORLD_HINT.format(path=world)}")
    try:
        options["model.ckpt"] = str(latest_checkpoint(stage2))
    except FileNotFoundError:
        raise UsageError(f"--tiny-world {world}: no stage-2 checkpoint in {stage2}; "
                         f"{WORLD_HINT.format(path=world)}") from None
    return options


def _run(cmd: list[str], what: str) -> None:
    from minigpt4.tiny_world.jobs import child_env

    log.info("%s: %s", what, " ".join(cmd))
    done = subprocess.run(cmd, env=child_env(), capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{what} failed (exit {done.returncode}):\n" + "\n".join(tail))


def describe_and_embed(out: Path, world_options: dict, kind: str, batch_size: int) -> Path:
    """Descriptions of the training images by the tiny MiniGPT-4, then their embeddings; returns the
    embedding file."""
    jsonl, emb = out / "descriptions" / f"{kind}.jsonl", out / "descriptions" / f"{kind}.safetensors"
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    options = [f"{k}={v}" for k, v in world_options.items()] + ["run.device=cpu"]
    _run([sys.executable, "-m", "minigpt4.caption", "--cfg-path", str(config_file("eval_configs/tiny_eval.yaml")),
          "--images", str(out / "data" / "train"), "--labels", "dirs", "--out", str(jsonl), "--prompt", PROMPTS[kind],
          "--batch-size", str(batch_size), "--max-new-tokens", "80", "--no-progress", "--options", *options],
         f"describe ({kind})")
    _run([sys.executable, "-m", "minigpt4.gpt4image.embed", "--descriptions", str(jsonl), "--out", str(emb)],
         f"embed ({kind})")
    return emb


# --------------------------------------------------------------------------- training (in worker processes)
def train_one(job: dict) -> dict:
    """One training run through train.py's code (same process: no interpreter start per run), then the
    exported classifier scored on the test split."""
    import torch

    from minigpt4.train import cli as train_cli

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    log_file = Path(job["run_dir"]).with_suffix(".log")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as f, contextlib.redirect_stderr(f):  # train.py's log of this run
        code = train_cli(["--cfg-path", str(job["config"]), "--overwrite", "--options", *job["options"]])
    logging.basicConfig(level=logging.WARNING, force=True)  # detach the handler from the closed log file
    if code != 0:
        raise RuntimeError(f"train.py exited with {code} for {job['name']}; see {log_file}")
    classifier = Path(job["run_dir"]) / "classifier.safetensors"
    top1 = score(classifier, Path(job["test"]), job["image_size"])
    return {"backbone": job["backbone"], "variant": job["variant"], "seed": job["seed"], "top1": top1,
            "train_seconds": round(time.perf_counter() - t0, 1)}


def score(classifier: Path, test_root: Path, image_size: int) -> float:
    """Top-1 of an exported classifier, loaded into a fresh ``timm.create_model`` (strict), on ``test_root``."""
    import timm
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    from minigpt4.gpt4image.data import DescribedImageFolder, scan_folder
    from minigpt4.gpt4image.processors import ClassifierImageEvalProcessor

    with safe_open(str(classifier), framework="pt") as f:
        meta = f.metadata()
    classes = json.loads(meta["class_names"])
    model = timm.create_model(meta["backbone"], pretrained=False, num_classes=int(meta["num_classes"]),
                              **json.loads(meta["backbone_kwargs"]))
    model.load_state_dict(load_file(str(classifier)), strict=True)
    model.eval()
    data = DescribedImageFolder(test_root, scan_folder(test_root, "test"), classes,
                                ClassifierImageEvalProcessor(image_size, crop_pct=1.0))
    correct = 0
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(data, batch_size=100):
            correct += int((model(batch["image"]).argmax(1) == batch["label"]).sum())
    return correct / len(data)


def jobs_for(out: Path, embeddings: dict, backbones, variants, seeds) -> list[dict]:
    jobs = []
    for backbone in backbones:
        for variant in variants:
            for seed in seeds:
                name = f"{variant}_s{seed}"
                emb = embeddings["class" if variant == "aligned_class" else "plain"]
                options = [f"run.seed={seed}", f"run.output_dir={out / 'runs' / backbone}", f"run.job_id={name}",
                           f"datasets.gpt4image_folder.build_info.train={out / 'data' / 'train'}",
                           f"datasets.gpt4image_folder.build_info.embeddings={emb}",
                           f"model.lambda={0.0 if variant == 'baseline' else 0.3}",
                           f"datasets.gpt4image_folder.shuffle_descriptions={variant == 'shuffled'}",
                           f"datasets.gpt4image_folder.seed={seed}"]
                jobs.append({"name": f"{backbone}/{name}", "backbone": backbone, "variant": variant, "seed": seed,
                             "config": str(CONFIGS[backbone]), "options": options, "image_size": 64,
                             "run_dir": str(out / "runs" / backbone / name), "test": str(out / "data" / "test")})
    return jobs


def description_accuracy(out: Path, kind: str) -> dict:
    """How right the tiny MiniGPT-4's descriptions of the training images are, against the scenes' ground
    truth (the tiny world's own parser): the whole description, and the leftmost object's shape (the label)."""
    from minigpt4.tiny_world import text as T
    from minigpt4.tiny_world.scenes import Scene

    scenes = {}
    for line in (out / "data" / "scenes.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["split"] == "train":
            scenes[row["key"]] = Scene.from_json(row["scene"])
    rows = [json.loads(x) for x in (out / "descriptions" / f"{kind}.jsonl").read_text().splitlines() if x.strip()]
    exact = label = 0
    for row in rows:
        parsed = T.parse_description(row.get("caption", ""))
        first = parsed.objects.get("On the left is") or parsed.objects.get("It is")
        exact += T.description_matches(parsed, scenes[row["key"]])
        label += first is not None and first[2] == scenes[row["key"]].objects[0].shape
    return {"images": len(rows), "exact": exact, "leftmost_shape_right": label}


def summarise(runs: list[dict]) -> dict:
    out = {}
    for backbone in sorted({r["backbone"] for r in runs}):
        for variant in VARIANTS:
            vals = [r["top1"] for r in runs if r["backbone"] == backbone and r["variant"] == variant]
            if vals:
                out[f"{backbone}/{variant}"] = {"mean": statistics.mean(vals),
                                                "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                                                "n": len(vals)}
    return out


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run(out: Path, world: Path, *, seeds=(0, 1, 2), jobs: int = 2, train_per_class: int = 16,
        test_per_class: int = 50, variants=VARIANTS, backbones=("cnn", "vit"), batch_size: int = 8) -> dict:
    from minigpt4.gpt4image.report import write_html
    from minigpt4.gpt4image.tiny_split import world_spec, write_split

    t0, c0 = time.perf_counter(), cpu_seconds()
    world_options = world_files(world)
    out_folder(out, "--out", create=True)
    timings = {}
    sizes = write_split(out / "data", world_spec(world), train_per_class=train_per_class,
                        test_per_class=test_per_class)
    timings["data"] = time.perf_counter() - t0
    kinds = ["plain"] + (["class"] if "aligned_class" in variants else [])
    embeddings = {}
    for kind in kinds:
        t = time.perf_counter()
        embeddings[kind] = describe_and_embed(out, world_options, kind, batch_size)
        timings[f"describe_embed_{kind}"] = time.perf_counter() - t
    t = time.perf_counter()
    todo = jobs_for(out, embeddings, backbones, variants, seeds)
    import multiprocessing as mp

    runs = []

    def report(complete: bool) -> dict:
        timings["train"] = time.perf_counter() - t
        # ``runs`` holds the three variants of the method (baseline, aligned, shuffled; aligned = descriptions
        # from the plain prompt); the aligned runs on class-conditioned descriptions are listed apart
        main = [r for r in runs if r["variant"] != "aligned_class"]
        class_conditioned = [{**r, "variant": "aligned", "descriptions": "class-conditioned"}
                             for r in runs if r["variant"] == "aligned_class"]
        return {"runs": main, "runs_class_conditioned": class_conditioned, "summary": summarise(runs),
                "complete": complete,
                "seconds": round(time.perf_counter() - t0, 1), "cpu_seconds": round(cpu_seconds() - c0, 1),
                "stage_seconds": {k: round(v, 1) for k, v in timings.items()}, "images": sizes,
                "label": "shape of the leftmost object", "prompts": {k: PROMPTS[k] for k in kinds},
                "descriptions": {k: description_accuracy(out, k) for k in kinds},
                "world": str(world)}

    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        for result in pool.map(train_one, todo):
            log.info("%s/%s seed %d: top-1 %.3f (%.0f s)", result["backbone"], result["variant"], result["seed"],
                     result["top1"], result["train_seconds"])
            runs.append(result)
            (out / "report.json").write_text(json.dumps(report(False), indent=2))  # progress so far
    final = report(True)  # CPU time of the finished worker processes included
    (out / "report.json").write_text(json.dumps(final, indent=2))
    write_html(out, final)
    return final


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minigpt4.gpt4image.tiny", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=path_arg, default=Path("gpt4image_tiny"),
                   help="output folder (default gpt4image_tiny)")
    p.add_argument("--tiny-world", type=path_arg, default=Path("tiny_world"),
                   help="the tiny world folder (default: tiny_world in the working directory)")
    p.add_argument("--build-world", action="store_true", help="build the tiny world first if it is missing")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=2, help="training runs side by side (one thread each)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    variants = tuple(dict.fromkeys(v.strip() for v in args.variants.split(",") if v.strip()))  # each once
    unknown = [v for v in variants if v not in VARIANTS]
    if not variants or unknown:
        p.error(f"--variants {args.variants!r}: " + (f"unknown {unknown[0]!r}; " if unknown else "")
                + f"name some of {', '.join(VARIANTS)}")
    for flag, value in (("--seeds", args.seeds), ("--jobs", args.jobs)):
        if value < 1:
            p.error(f"{flag} must be at least 1, got {value}")
    return run_cli(p.prog, summarize, args, args.tiny_world.resolve(), variants)


def summarize(args, world: Path, variants: tuple) -> int:
    out_folder(args.out, "--out")  # before the world is built (minutes)
    out_folder(world, "--tiny-world")  # a file is not a world, and no world can be built into it
    if args.build_world and not (world / "runs" / "stage2").is_dir():
        from minigpt4.tiny_world.pipeline import run as build_world
        from minigpt4.tiny_world.presets import PRESETS

        build_world(world, PRESETS["full"], nproc=2)
    report = run(args.out.resolve(), world, seeds=tuple(range(args.seeds)), jobs=args.jobs, variants=variants)
    for key, s in report["summary"].items():
        print(f"{key:24s} top-1 {s['mean']:.3f} ± {s['std']:.3f} (n={s['n']})")
    print(f"{report['seconds']:.0f} s wall, {report['cpu_seconds']:.0f} s CPU; {args.out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
