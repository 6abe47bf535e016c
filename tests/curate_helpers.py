"""Work folders for the curation tests: described rows written by hand (no model needed)."""
from __future__ import annotations

import json
from pathlib import Path

from minigpt4 import curate
from minigpt4.testing.curation import PARAGRAPH, described_workdir  # noqa: F401


def rows(path) -> list[dict]:
    """Complete rows (a line cut by a kill, without its newline, is not a row yet)."""
    text = Path(path).read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]


def kill_after_rows(proc, path, n: int, timeout: float) -> None:
    """SIGKILL ``proc`` once ``path`` holds at least ``n`` complete rows (or after ``timeout`` seconds)."""
    import signal
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (not Path(path).exists() or len(rows(path)) < n):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def one_per_key(path) -> dict[str, dict]:
    rs = rows(path)
    keys = [r["key"] for r in rs]
    assert len(keys) == len(set(keys)), f"duplicate rows in {path}"
    return {r["key"]: r for r in rs}


def config(work: Path, *options: str, **kw):
    return curate.load_config(None, list(options), work_dir=work, **kw)
