"""MiniGPT-4 in the browser from a checkout: ``python demo.py`` (same as ``minigpt4-demo``).

The code lives in :mod:`minigpt4.demo`; this file keeps the original's command line working.
"""
from minigpt4.demo import *  # noqa: F401,F403
from minigpt4.demo import check_args, main, parse_args  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
