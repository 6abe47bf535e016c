"""Build the tiny world from nothing and show MiniGPT-4's recipe on it.

What it builds, in OUT: synthetic images of coloured shapes (LAION-style webdataset shards, a cc_sbu_align
folder, 200 held-out images), two tiny frozen backbones pretrained by the library (a Llama language model
and an EVA-style ViT + Q-Former, built once and reused), then stage 1 (captions) and stage 2 (detailed
descriptions) through train.py under torchrun, the paper's curation loop (the stage-1 model describes
the stage-2 images itself, the descriptions are cleaned and filtered with python -m minigpt4.curate while
stage 2 trains on the ground truth, and a second stage 2 is trained on that curated set), and an
evaluation of the control, stage 1, stage 2 and stage 2 (curated) on the held-out images.

How long: about 810 CPU seconds from nothing for the full preset (7 min 45 s measured on a quiet 2-core
CPU, of which the frozen backbones take about 4.7; 14 minutes on a machine shared at load 17-33); a second
run with the same OUT reuses the data and the backbones. --preset test takes about 2 minutes.

Where results go: OUT/report.json (every figure), OUT/report.html (a page with the held-out images, every
model's answers and each stage's loss curve), OUT/runs/<stage>/tiny/ (checkpoints, log.txt, curves.png,
train.log), OUT/curate/ (the curation's files and its cc_sbu_align export), OUT/eval/ (per-model samples).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from minigpt4.errors import UsageError, non_empty, out_folder, run_cli

PRESET_NAMES = ("full", "test")  # minigpt4.tiny_world.presets.PRESETS (kept here so --help imports nothing heavy)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m minigpt4.tiny_world", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=non_empty, default="tiny_world", help="output folder (default: tiny_world)")
    p.add_argument("--preset", choices=PRESET_NAMES, default="full",
                   help="full: the documented run; test: a shrunken run with smaller backbones and fewer steps, "
                        "same code path (default: full)")
    p.add_argument("--nproc", type=int, default=2,
                   help="processes for stage 1 (torchrun); the two stage-2 runs use one process each, side by "
                        "side (default: 2)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    return run_cli("minigpt4.tiny_world", build, parse_args(argv))


def build(args) -> int:
    if args.nproc < 1:
        raise UsageError(f"--nproc must be at least 1, got {args.nproc}")
    out_folder(args.out, "--out")
    import logging
    import signal

    from minigpt4.tiny_world.pipeline import run  # heavy imports only after the arguments are parsed
    from minigpt4.tiny_world.presets import PRESETS

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    def stop(signum, frame):  # SIGTERM stops the child jobs too, as Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        run(Path(args.out), PRESETS[args.preset], nproc=args.nproc)
    except KeyboardInterrupt:
        print("stopped; the data and finished backbones are kept and reused by the next run", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
