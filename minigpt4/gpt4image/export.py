"""Export a trained GPT4Image classifier as a plain timm state dict (no projection head):

    python -m minigpt4.gpt4image.export --checkpoint output/<run>/<job>/checkpoint_9.safetensors --out model.safetensors
"""
from __future__ import annotations

import argparse
import sys

from minigpt4.errors import run_cli


def main(argv=None) -> int:
    from minigpt4.gpt4image.weights import export_classifier

    p = argparse.ArgumentParser(prog="python -m minigpt4.gpt4image.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint_*.safetensors written by train.py")
    p.add_argument("--out", required=True, help="output .safetensors")
    args = p.parse_args(argv)
    return run_cli(p.prog, lambda: print(export_classifier(args.checkpoint, args.out)) or 0)


if __name__ == "__main__":
    sys.exit(main())
