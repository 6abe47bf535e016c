"""Build (or reuse) the tiny world's frozen backbones: the language model and the vision tower, each
pretrained once, deterministically from the preset's seed, in its own single-thread process (two
single-thread processes side by side do more work on two cores than one two-thread process).

    python -m minigpt4.tiny_world.backbones --part lm|vision --out DIR [--preset full|test]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

log = logging.getLogger(__name__)
PARTS = {"lm": "llm", "vision": "vision"}


def folder(out: Path, part: str) -> Path:
    return Path(out) / "backbones" / PARTS[part]


def spec_of(preset, part: str):
    return preset.lm if part == "lm" else preset.vision


def is_built(out: Path, preset, part: str) -> bool:
    """True when the folder holds a finished pretraining of exactly this spec."""
    f = folder(out, part)
    report = f / "pretraining.json"
    files = ["config.json", "tokenizer.model"] if part == "lm" else ["eva_vit.pth", "blip2_qformer.pth"]
    if not report.exists() or not all((f / n).exists() for n in files):
        return False
    saved = json.loads(report.read_text()).get("spec")
    return saved == json.loads(json.dumps(asdict(spec_of(preset, part))))


def build_part(out: Path, preset, part: str, threads: int = 1, status: Path | None = None) -> dict:
    """Pretrain one part in this process. With ``status``, the step count is rewritten there (for the
    parent's single progress display) instead of drawing a progress bar."""
    spec = spec_of(preset, part)
    bar = None
    if status is None:
        from tqdm import tqdm

        name = "language model" if part == "lm" else "vision tower"
        bar = tqdm(total=spec.max_steps, desc=f"pretrain {name}", mininterval=2)

    def progress(step, loss):
        if bar is not None:
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss:.3f}")
        elif step % 10 == 0:
            tmp = status.with_name(status.name + ".tmp")
            tmp.write_text(f"{step} {loss:.4f}\n")
            tmp.replace(status)

    if part == "lm":
        from minigpt4.tiny_world.lm import pretrain_lm

        report = pretrain_lm(folder(out, part), spec, threads=threads, progress=progress)
    else:
        from minigpt4.tiny_world.vision import pretrain_vision

        report = pretrain_vision(folder(out, part), spec, threads=threads, progress=progress)
    if bar is not None:
        bar.close()
    return report


def build_backbones(out: Path, preset) -> dict:
    """Build whatever is missing, each part in its own single-thread process, side by side, with one
    progress display; their output goes to ``backbones/<part>.log``."""
    from minigpt4.tiny_world.jobs import Job, run_jobs

    todo = [p for p in PARTS if not is_built(out, preset, p)]
    if todo:
        logs = Path(out) / "backbones"
        jobs = [Job(name=part, total=spec_of(preset, part).max_steps, log_path=logs / f"{part}.log",
                    status_path=logs / f"{part}.status",
                    cmd=[sys.executable, "-m", "minigpt4.tiny_world.backbones", "--part", part, "--out", str(out),
                         "--preset", preset.name, "--status", str(logs / f"{part}.status")]) for part in todo]
        run_jobs(jobs, "pretrain frozen backbones (" + " + ".join(todo) + ")")
    return {part: json.loads((folder(out, part) / "pretraining.json").read_text()) for part in PARTS}


def main(argv=None) -> int:
    from minigpt4.tiny_world.presets import PRESETS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=sorted(PARTS), required=True)
    p.add_argument("--out", default="tiny_world")
    p.add_argument("--preset", choices=sorted(PRESETS), default="full")
    p.add_argument("--status", type=Path, default=None,
                   help="write the step count to this file instead of drawing a progress bar")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    report = build_part(Path(args.out), PRESETS[args.preset], args.part, args.threads, args.status)
    last = report["history"][-1] if report["history"] else {}
    print(f"{args.part}: {report['steps']} steps, {report['parameters'] / 1e6:.2f} M parameters, last check {last}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
