"""Where a run writes: ``run.output_dir/<job id>/`` relative to the working directory (never inside the
package). Checked for writability before any model is built."""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from minigpt4.common.config import ConfigError


def new_job_id() -> str:
    """A timestamp to the second (the original dropped to 10-minute buckets, so two runs could share a folder)."""
    return time.strftime("%Y%m%d%H%M%S")


def job_folder(run_cfg, job_id: str, resume_path: str | Path | None = None) -> Path:
    """The job folder: the resumed run's own folder when resuming, else ``output_dir/job_id``."""
    if resume_path is not None:
        return Path(resume_path).resolve().parent
    out = run_cfg.get("output_dir")
    if not out:
        raise ConfigError("run.output_dir is required (e.g. output/minigpt4_stage1_pretrain)")
    return Path(os.path.expanduser(str(out))).resolve() / job_id


def ensure_writable(folder: Path) -> Path:
    """Create ``folder`` and prove it is writable; a one-line error naming ``run.output_dir`` otherwise."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_test_{uuid.uuid4().hex}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"run.output_dir: cannot write to {folder} ({e.strerror or e})") from None
    return folder


def previous_run(folder: Path) -> bool:
    """True if ``folder`` already holds a run's resume file."""
    return (folder / "resume.pt").is_file()


# what a run leaves in its job folder once training started (the config line of log.txt comes first)
RUN_TRACES = ("log.txt", "checkpoint_*.safetensors", "tensorboard", ".resume.pt.*.tmp")


def runs_without_resume(output_dir: str | Path) -> list[tuple[Path, list[str]]]:
    """Job folders under ``output_dir`` that hold a run but no resume file, oldest first, each with the
    names of the traces found (a folder made by a run that failed before training counts as no run)."""
    root = Path(os.path.expanduser(str(output_dir)))
    if not root.is_dir():
        return []
    found = []
    for folder in sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime):
        if previous_run(folder):
            continue
        traces = sorted({hit.name for pattern in RUN_TRACES for hit in folder.glob(pattern)})
        if traces:
            found.append((folder, traces))
    return found
