"""Train MiniGPT-4 from a checkout: ``python train.py`` / ``torchrun ... train.py`` (same as ``minigpt4-train``).

The code lives in :mod:`minigpt4.train`; this file keeps the original's command line working.
"""
import sys

from minigpt4.train import *  # noqa: F401,F403
from minigpt4.train import check_resume, cli, main, parse_args, resolve_resume, setup_seeds  # noqa: F401

if __name__ == "__main__":
    sys.exit(cli())
