"""Optimizer parameter groups and the two registered learning-rate schedules.

Schedules are pure functions of the step, so resuming only needs the global step, and a test can
compare every step against the original's formula.

``linear_warmup_cosine_lr``
    Default (continuous): linear warmup from ``warmup_lr`` to ``init_lr`` over the first ``warmup_steps``
    GLOBAL steps, then a half cosine from ``init_lr`` to ``min_lr`` over the remaining steps. The LR is
    continuous and ends at ``min_lr`` after ``max_epoch * iters_per_epoch`` steps.
    ``run.faithful_lr_schedule: true`` reproduces the original exactly: the warmup uses the step *within the
    epoch* (only right while warmup fits in epoch 0), and the cosine runs over all steps including the warmup,
    so the LR jumps down when warmup ends (stage 1: 9.998e-5 -> 9.707e-5).
``linear_warmup_step_lr``
    Warmup (original: in epoch 0 by in-epoch step; default: by global step), then
    ``max(min_lr, init_lr * lr_decay_rate ** epoch)``.
"""
from __future__ import annotations

import math

import torch

from minigpt4.common.fields import typed
from minigpt4.common.registry import registry
from minigpt4.common.sections import RunConfig
from minigpt4.errors import ConfigError

NO_DECAY_MARKERS = ("bias", "ln", "bn")


# --------------------------------------------------------------------------- parameter groups
def param_groups(named_parameters, weight_decay: float) -> list[dict]:
    """The original's two groups: ``weight_decay`` for trainable params with ndim >= 2 whose name contains
    none of "bias", "ln", "bn"; 0 for the rest. Frozen params are left out."""
    decay, no_decay = [], []
    for name, p in named_parameters:
        if not p.requires_grad:
            continue
        if p.ndim < 2 or any(m in name for m in NO_DECAY_MARKERS):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": float(weight_decay)},
            {"params": no_decay, "weight_decay": 0.0}]


OPTIMIZERS = ("adamw", "sgd")


def build_optimizer(model: torch.nn.Module, run_cfg) -> torch.optim.Optimizer:
    """``run.optimizer``: ``adamw`` (default, betas (0.9, ``beta2``)) or ``sgd`` (``momentum``, default 0.9)."""
    run_cfg = typed(RunConfig, run_cfg, "run")
    groups = param_groups(model.named_parameters(), run_cfg.weight_decay)
    if not any(g["params"] for g in groups):
        raise ConfigError("the model has no trainable parameters")
    name = str(run_cfg.optimizer).lower()
    if name == "sgd":
        return torch.optim.SGD(groups, lr=float(run_cfg.init_lr), momentum=float(run_cfg.momentum))
    if name != "adamw":
        from minigpt4.common.config import ConfigError

        raise ConfigError(f"run.optimizer must be one of {list(OPTIMIZERS)}, got {name!r}")
    return torch.optim.AdamW(groups, lr=float(run_cfg.init_lr),
                             betas=(0.9, float(run_cfg.beta2)))


# --------------------------------------------------------------------------- pure schedule functions
def warmup_lr(step: int, warmup_steps: int, start_lr: float, max_lr: float) -> float:
    """The original's ``warmup_lr_schedule``."""
    return min(max_lr, start_lr + (max_lr - start_lr) * step / max(warmup_steps, 1))


def cosine_lr(step: int, total_steps: int, init_lr: float, min_lr: float) -> float:
    """The original's ``cosine_lr_schedule`` (``step`` of ``total_steps``)."""
    return (init_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * step / total_steps)) + min_lr


def original_warmup_cosine(epoch: int, step: int, *, iters_per_epoch: int, max_epoch: int, init_lr: float,
                           min_lr: float, warmup_steps: int, warmup_start_lr: float) -> float:
    """Exactly the original ``LinearWarmupCosineLRScheduler.step(cur_epoch, cur_step)``."""
    g = epoch * iters_per_epoch + step
    if g < warmup_steps:
        return warmup_lr(step, warmup_steps, warmup_start_lr, init_lr)
    return cosine_lr(g, max_epoch * iters_per_epoch, init_lr, min_lr)


def continuous_warmup_cosine(global_step: int, *, total_steps: int, init_lr: float, min_lr: float,
                             warmup_steps: int, warmup_start_lr: float) -> float:
    """Warmup over global steps, then a cosine over the steps after warmup: continuous, ends at ``min_lr``."""
    if global_step < warmup_steps:
        return warmup_start_lr + (init_lr - warmup_start_lr) * global_step / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((global_step - warmup_steps) / span, 1.0)
    return cosine_lr(progress, 1, init_lr, min_lr)


# --------------------------------------------------------------------------- registered schedulers
class _Schedule:
    def __init__(self, optimizer, max_epoch: int, iters_per_epoch: int, min_lr: float, init_lr: float,
                 warmup_steps: int = 0, warmup_start_lr: float = -1, decay_rate: float | None = None,
                 faithful: bool = False):
        if iters_per_epoch <= 0 or max_epoch <= 0:
            raise ConfigError("run.max_epoch and run.iters_per_epoch must be > 0")
        self.optimizer = optimizer
        self.max_epoch, self.iters_per_epoch = int(max_epoch), int(iters_per_epoch)
        self.init_lr, self.min_lr = float(init_lr), float(min_lr)
        self.warmup_steps = int(warmup_steps or 0)
        self.warmup_start_lr = float(warmup_start_lr) if warmup_start_lr is not None and warmup_start_lr >= 0 \
            else self.init_lr
        self.decay_rate = decay_rate
        self.faithful = bool(faithful)

    def lr_at(self, epoch: int, step: int) -> float:
        raise NotImplementedError

    def step(self, cur_epoch: int, cur_step: int) -> float:
        """Set the LR for step ``cur_step`` of epoch ``cur_epoch`` (as the original) and return it."""
        lr = self.lr_at(cur_epoch, cur_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr


@registry.register_lr_scheduler("linear_warmup_cosine_lr")
class LinearWarmupCosineLRScheduler(_Schedule):
    def lr_at(self, epoch: int, step: int) -> float:
        if self.faithful:
            return original_warmup_cosine(epoch, step, iters_per_epoch=self.iters_per_epoch,
                                          max_epoch=self.max_epoch, init_lr=self.init_lr, min_lr=self.min_lr,
                                          warmup_steps=self.warmup_steps, warmup_start_lr=self.warmup_start_lr)
        return continuous_warmup_cosine(epoch * self.iters_per_epoch + step,
                                        total_steps=self.max_epoch * self.iters_per_epoch, init_lr=self.init_lr,
                                        min_lr=self.min_lr, warmup_steps=self.warmup_steps,
                                        warmup_start_lr=self.warmup_start_lr)


@registry.register_lr_scheduler("linear_warmup_step_lr")
class LinearWarmupStepLRScheduler(_Schedule):
    def lr_at(self, epoch: int, step: int) -> float:
        rate = 1.0 if self.decay_rate is None else float(self.decay_rate)
        if self.faithful:
            if epoch == 0:
                return warmup_lr(step, self.warmup_steps, self.warmup_start_lr, self.init_lr)
            return max(self.min_lr, self.init_lr * rate ** epoch)
        g = epoch * self.iters_per_epoch + step
        if g < self.warmup_steps:
            return warmup_lr(g, self.warmup_steps, self.warmup_start_lr, self.init_lr)
        return max(self.min_lr, self.init_lr * rate ** epoch)


def build_lr_scheduler(optimizer, run_cfg):
    run_cfg = typed(RunConfig, run_cfg, "run")
    name = run_cfg.lr_sched
    cls = registry.get_lr_scheduler_class(name, key="run.lr_sched")
    for key in ("init_lr", "min_lr", "max_epoch", "iters_per_epoch"):
        if run_cfg.get(key) is None:
            from minigpt4.common.config import ConfigError

            raise ConfigError(f"run.{key} is required for run.lr_sched={name}")
    return cls(optimizer, max_epoch=run_cfg.max_epoch, iters_per_epoch=run_cfg.iters_per_epoch,
               min_lr=run_cfg.min_lr, init_lr=run_cfg.init_lr, warmup_steps=run_cfg.warmup_steps,
               warmup_start_lr=run_cfg.warmup_lr, decay_rate=run_cfg.lr_decay_rate,
               faithful=run_cfg.faithful_lr_schedule)
