"""Child processes of the tiny world (``train.py`` under torchrun, backbone pretraining): each writes its
output to its own log file, the console shows one progress display at a time (the jobs' steps, read
from the files they write), and a failed job prints the end of its log."""
from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # the folder that holds minigpt4/ (checkout or site-packages)
STEP_LINE = re.compile(r"epoch (\d+) \[(\d+)/(\d+)\]")


def child_env(**extra) -> dict:
    """Single-threaded, offline, and importing this copy of the library whatever the working directory."""
    path = os.pathsep.join([str(PACKAGE_PARENT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore::FutureWarning", "PYTHONPATH": path, **extra}


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and every child it has waited for."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Job:
    """One child process; ``progress()`` returns (steps done, steps in all) read from its log or status file."""
    name: str
    cmd: list[str]
    log_path: Path
    total: int
    status_path: Path | None = None  # a file the child rewrites with its step count (backbone pretraining)
    env: dict = field(default_factory=child_env)
    proc: subprocess.Popen | None = None
    _done: int = 0

    def start(self) -> "Job":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        log.close()
        return self

    def progress(self) -> int:
        try:
            if self.status_path is not None:
                self._done = int(self.status_path.read_text().split()[0])
            else:
                with open(self.log_path, "rb") as f:
                    f.seek(max(0, os.path.getsize(self.log_path) - 4096))
                    found = STEP_LINE.findall(f.read().decode(errors="replace"))
                if found:
                    epoch, i, n = map(int, found[-1])
                    self._done = epoch * n + i
        except (OSError, ValueError, IndexError):
            pass
        return min(self._done, self.total)

    def tail(self, lines: int = 25) -> str:
        """A child's own one-line error when it printed one (``train.py: error: ...``), else its last lines."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        errors = [line for line in text if re.match(r"^[\w.]+(\.py)?: error: ", line)]
        return "\n".join(errors[-3:] or text[-lines:])


def run_jobs(jobs: list[Job], desc: str, poll: float = 1.0) -> None:
    """Start ``jobs`` side by side (those not started yet), show one progress bar for all of them, wait; a
    failure stops the others and raises with the end of the failed job's log."""
    from tqdm import tqdm

    for job in jobs:
        if job.proc is None:
            job.start()
    bar = tqdm(total=sum(j.total for j in jobs), desc=desc, unit="step", dynamic_ncols=True, mininterval=1)
    failed = None
    try:
        while True:
            codes = [j.proc.poll() for j in jobs]
            steps = [j.progress() for j in jobs]
            if sum(steps) != bar.n:
                bar.set_postfix_str(", ".join(f"{j.name} {n}/{j.total}" for j, n in zip(jobs, steps)), refresh=False)
                bar.update(sum(steps) - bar.n)
            failed = next((j for j, c in zip(jobs, codes) if c not in (None, 0)), None)
            if failed is not None or all(c == 0 for c in codes):
                break
            time.sleep(poll)
    except KeyboardInterrupt:
        failed = None
        raise
    finally:
        if failed is not None or any(j.proc.poll() is None for j in jobs):
            for j in jobs:
                if j.proc.poll() is None:
                    j.proc.terminate()
            for j in jobs:
                try:
                    j.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    j.proc.kill()
                    j.proc.wait()
        if failed is None:
            bar.update(bar.total - bar.n)
        bar.close()
    if failed is not None:
        raise RuntimeError(f"{failed.name} failed (exit code {failed.proc.returncode}); end of {failed.log_path}:\n"
                           f"{failed.tail()}")


def torchrun(nproc: int, args: list[str]) -> list[str]:
    """``torchrun --standalone ... --module minigpt4.train``: each launch finds its own free rendezvous port, so
    runs can go side by side; the training entry point is the package's, so an installed wheel works too."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "--module", "minigpt4.train", *args]
