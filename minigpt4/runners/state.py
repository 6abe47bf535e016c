"""The position of a run, as one value: where it is (epoch, step in the epoch, global step), the running sums
of the current epoch and the per-step history. Saved in and restored from the resume file as a unit (the
resume file keeps its keys: ``epoch``, ``step``, ``global_step``, ``epoch_sums``, ``history``)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainState:
    epoch: int = 0
    step: int = 0  # steps done in ``epoch`` (the next step's index)
    global_step: int = 0
    loss_sum: float = 0.0  # over the steps of ``epoch`` so far
    lr_sum: float = 0.0
    count: int = 0
    history: list[tuple[int, float, float]] = field(default_factory=list)  # (global step, loss, lr)

    def record(self, loss: float, lr: float) -> None:
        """One step done."""
        self.step += 1
        self.global_step += 1
        self.loss_sum += loss
        self.lr_sum += lr
        self.count += 1
        self.history.append((self.global_step, loss, lr))

    def next_epoch(self) -> None:
        self.epoch, self.step = self.epoch + 1, 0
        self.loss_sum, self.lr_sum, self.count = 0.0, 0.0, 0

    def epoch_means(self) -> dict:
        n = max(self.count, 1)
        return {"train_loss": self.loss_sum / n, "train_lr": self.lr_sum / n}

    def to_resume(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "global_step": self.global_step,
                "epoch_sums": [self.loss_sum, self.lr_sum, self.count], "history": list(self.history)}

    def restore(self, saved: dict, iters_per_epoch: int) -> None:
        """Continue from a resume file's fields (in place: the history list keeps its identity); a file
        saved at the end of an epoch continues with the next one."""
        self.epoch, self.step, self.global_step = saved["epoch"], saved["step"], saved["global_step"]
        self.loss_sum, self.lr_sum, self.count = saved.get("epoch_sums", [0.0, 0.0, 0])
        self.history[:] = [tuple(h) for h in saved.get("history", [])]
        if self.step >= iters_per_epoch:
            self.next_epoch()
