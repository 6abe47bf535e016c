"""What a run reports (main process only): periodic log lines, TensorBoard scalars, ``log.txt`` and a
loss/LR curve PNG per epoch."""
from __future__ import annotations

import json
import logging
import resource
import sys
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated on GPU, peak resident set size of this process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}"


class StepMeter:
    """Accumulates per-step timings between two log lines."""

    def __init__(self, total_steps: int, start_step: int = 0):
        self.total_steps, self.start_step = total_steps, start_step
        self.t0 = self.t_window = time.perf_counter()
        self.window = {"steps": 0, "samples": 0, "data": 0.0, "loss": 0.0}

    def update(self, samples: int, data_seconds: float, loss: float) -> None:
        w = self.window
        w["steps"] += 1
        w["samples"] += samples
        w["data"] += data_seconds
        w["loss"] += loss

    def summary(self, global_step: int) -> dict:
        now = time.perf_counter()
        w, elapsed = self.window, max(now - self.t_window, 1e-9)
        done = max(global_step - self.start_step, 1)
        per_step = (now - self.t0) / done
        out = {"loss": w["loss"] / max(w["steps"], 1), "samples_per_s": w["samples"] / elapsed,
               "data_wait": w["data"] / elapsed, "eta": format_eta(per_step * (self.total_steps - global_step))}
        self.t_window = now
        self.window = {"steps": 0, "samples": 0, "data": 0.0, "loss": 0.0}
        return out


class Reporter:
    """TensorBoard + ``log.txt`` + PNG curves, all in the run's output folder. Only built on rank 0."""

    def __init__(self, out_dir: Path, tensorboard: bool = True, title: str | None = None,
                 history: list | None = None):
        self.out_dir = out_dir
        self.title = title  # printed above the curves (which run they belong to)
        # (global step, loss, lr) per step, plotted; owned by the run's TrainState, which appends to it
        self.history: list[tuple[int, float, float]] = history if history is not None else []
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"))

    def write_config(self, config: dict) -> None:
        with open(self.out_dir / "log.txt", "a") as f:
            f.write(json.dumps(config, default=str) + "\n")

    def step(self, global_step: int, loss: float, lr: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, global_step)
            self.writer.add_scalar("train/lr", lr, global_step)

    def epoch(self, stats: dict) -> None:
        with open(self.out_dir / "log.txt", "a") as f:
            f.write(json.dumps(stats) + "\n")
        if self.writer is not None:
            self.writer.flush()
        self.plot()

    def plot(self) -> Path | None:
        if not self.history:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps, losses, lrs = zip(*self.history)
        fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
        ax_loss.plot(steps, losses, lw=1)
        if self.title:
            ax_loss.set_title(self.title)
        ax_loss.set_ylabel("loss")
        ax_lr.plot(steps, lrs, lw=1, color="tab:orange")
        ax_lr.set_ylabel("learning rate")
        ax_lr.set_xlabel("step")
        fig.tight_layout()
        path = self.out_dir / "curves.png"
        tmp = path.with_name(".curves.tmp.png")
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        tmp.replace(path)
        return path

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
