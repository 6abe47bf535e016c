"""Parameter groups and LR schedules: the original's formula when faithful, continuous otherwise."""
from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from minigpt4.common.optim import build_lr_scheduler, build_optimizer, param_groups
from minigpt4.common.registry import registry

STAGE1 = dict(init_lr=1e-4, min_lr=8e-5, warmup_lr=1e-6, warmup_steps=5000, max_epoch=4, iters_per_epoch=5000)
STAGE2 = dict(init_lr=3e-5, min_lr=1e-5, warmup_lr=1e-6, warmup_steps=200, max_epoch=5, iters_per_epoch=200)


def original_lr(epoch, step, *, init_lr, min_lr, warmup_lr, warmup_steps, max_epoch, iters_per_epoch):
    """The original LinearWarmupCosineLRScheduler.step, written out independently from the spec."""
    total_cur_step = epoch * iters_per_epoch + step
    if total_cur_step < warmup_steps:
        return min(init_lr, warmup_lr + (init_lr - warmup_lr) * step / max(warmup_steps, 1))
    return (init_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * total_cur_step / (max_epoch * iters_per_epoch))) \
        + min_lr


def _sched(faithful, values, name="linear_warmup_cosine_lr", **extra):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2, 2))], lr=1.0)
    run = OmegaConf.create({"lr_sched": name, "faithful_lr_schedule": faithful, **values, **extra})
    return build_lr_scheduler(opt, run), opt


@pytest.mark.parametrize("values", [STAGE1, STAGE2], ids=["stage1", "stage2"])
def test_faithful_matches_original_every_step(values):
    sched, opt = _sched(True, values)
    for epoch in range(values["max_epoch"]):
        for step in range(values["iters_per_epoch"]):
            lr = sched.step(epoch, step)
            assert lr == original_lr(epoch, step, **values)
            assert opt.param_groups[0]["lr"] == lr


def test_faithful_has_the_original_jump_after_warmup():
    sched, _ = _sched(True, STAGE1)
    before, after = sched.lr_at(0, 4999), sched.lr_at(1, 0)
    assert before == pytest.approx(9.998e-5, rel=1e-4)
    assert after == pytest.approx(9.7067e-5, rel=1e-4)


@pytest.mark.parametrize("values", [STAGE1, STAGE2, dict(STAGE2, warmup_steps=300)], ids=["s1", "s2", "warmup>epoch"])
def test_default_is_continuous_and_ends_at_min(values):
    sched, _ = _sched(False, values)
    total = values["max_epoch"] * values["iters_per_epoch"]
    lrs = [sched.lr_at(g // values["iters_per_epoch"], g % values["iters_per_epoch"]) for g in range(total + 1)]
    assert lrs[0] == values["warmup_lr"]
    assert lrs[values["warmup_steps"]] == pytest.approx(values["init_lr"])
    assert max(lrs) == pytest.approx(values["init_lr"])
    assert lrs[-1] == pytest.approx(values["min_lr"])
    warm_slope = (values["init_lr"] - values["warmup_lr"]) / values["warmup_steps"]
    biggest_step = max(abs(b - a) for a, b in zip(lrs, lrs[1:]))
    assert biggest_step <= warm_slope * (1 + 1e-9)  # no jump anywhere, warmup is the steepest part
    # warmup is increasing, the cosine never increases
    w = values["warmup_steps"]
    assert all(b > a for a, b in zip(lrs[:w], lrs[1:w + 1]))
    assert all(b <= a for a, b in zip(lrs[w:], lrs[w + 1:]))


def test_step_lr_faithful_and_default():
    values = dict(init_lr=1e-3, min_lr=1e-5, warmup_lr=1e-6, warmup_steps=5, max_epoch=4, iters_per_epoch=10)
    sched, _ = _sched(True, values, name="linear_warmup_step_lr", lr_decay_rate=0.5)
    assert sched.lr_at(0, 0) == 1e-6
    assert sched.lr_at(0, 7) == 1e-3
    assert sched.lr_at(2, 3) == 1e-3 * 0.25
    sched, _ = _sched(False, values, name="linear_warmup_step_lr", lr_decay_rate=0.5)
    assert sched.lr_at(3, 0) == 1e-3 * 0.125


def test_schedulers_registered():
    assert {"linear_warmup_cosine_lr", "linear_warmup_step_lr"} <= set(registry.list_lr_schedulers())


def test_param_groups_match_original_rule():
    model = torch.nn.ModuleDict({"llama_proj": torch.nn.Linear(3, 4), "ln_vision": torch.nn.LayerNorm(4),
                                 "bn1": torch.nn.BatchNorm1d(4), "frozen": torch.nn.Linear(4, 4)})
    model["frozen"].requires_grad_(False)
    model.register_parameter("scale", torch.nn.Parameter(torch.ones(5)))
    decay, no_decay = param_groups(model.named_parameters(), 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert [names[id(p)] for p in decay["params"]] == ["llama_proj.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == sorted(
        ["llama_proj.bias", "ln_vision.weight", "ln_vision.bias", "bn1.weight", "bn1.bias", "scale"])
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.05, 0.0)
    opt = build_optimizer(model, OmegaConf.create({"init_lr": 1e-4, "weight_decay": 0.05}))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999)
