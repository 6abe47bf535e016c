"""Command-line checks shared by the benchmarks (not a benchmark itself).

A count, size or duration that cannot give a measurement (zero or negative rounds, images, threads, a
negative latency...) is refused by argparse in one line, ``<script>: error: argument --rounds: must be at
least 1, got 0``, before anything is built or written; so is a ``--tiny-world`` that is not a built tiny
world. The library's own user errors (:class:`minigpt4.errors.UserError`: a config key, a weight file, a
flag) go through the library's boundary, :func:`minigpt4.errors.run_cli`, as in its own commands::

    if __name__ == "__main__":
        raise SystemExit(run_cli(PROG, main))
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from minigpt4.errors import run_cli  # noqa: F401  (re-exported: the library's one-line boundary)


def _number(kind, text: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def int_at_least(low: int):
    """An argparse type: an integer of at least ``low``."""
    def parse(text: str) -> int:
        value = _number(int, text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = f"int_at_least_{low}"
    return parse


positive_int = int_at_least(1)  # rounds, steps, images, threads, tokens...
non_negative_int = int_at_least(0)  # DataLoader workers...


def positive_float(text: str) -> float:
    """An argparse type: a finite number above 0 (a duration that must let something happen)."""
    value = _number(float, text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {value:g}")
    return value


def non_negative_float(text: str) -> float:
    """An argparse type: a finite number of at least 0 (a latency, a delay)."""
    value = _number(float, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value:g}")
    return value


def is_built_tiny_world(path) -> bool:
    """``report.json`` is written when ``python -m minigpt4.tiny_world`` has finished building."""
    return (Path(path) / "report.json").is_file()


def not_built(path) -> str:
    return (f"{path} is not a built tiny world (no report.json); build it with "
            f"python -m minigpt4.tiny_world --out {path}")


def built_tiny_world(text: str) -> Path:
    """An argparse type: the folder of a built tiny world."""
    path = Path(text).expanduser()
    if not is_built_tiny_world(path):
        raise argparse.ArgumentTypeError(not_built(path))
    return path


def default_tiny_world() -> Path:
    """``$MINIGPT4_TINY_WORLD``, else the tiny configs' own lookup (./tiny_world, then the repository's)."""
    from minigpt4.common.tiny_world_paths import tiny_world_dir

    return Path(os.environ.get("MINIGPT4_TINY_WORLD") or tiny_world_dir())
