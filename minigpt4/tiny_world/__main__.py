"""``python -m minigpt4.tiny_world --out DIR [--preset full|test]``: the whole tiny world from nothing."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def main(argv=None) -> int:
    from minigpt4.tiny_world.pipeline import run
    from minigpt4.tiny_world.presets import PRESETS

    p = argparse.ArgumentParser(prog="python -m minigpt4.tiny_world", description=__doc__)
    p.add_argument("--out", default="tiny_world", help="output folder (default: tiny_world)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="full",
                   help="full: the documented run; test: a shrunken run with smaller backbones and fewer steps")
    p.add_argument("--nproc", type=int, default=2, help="training processes per stage (torchrun)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    run(Path(args.out), PRESETS[args.preset], nproc=args.nproc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
