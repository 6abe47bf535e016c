"""Cheap checks that run before any model is built, so a wrong path or a mismatched checkpoint is a
one-line error in seconds instead of a traceback after minutes of loading."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from minigpt4.models.checkpoint import CheckpointError, load_torch, require_file


def projection_shape(path: Path) -> tuple[int, ...] | None:
    """Shape of ``llama_proj.weight`` in a projection checkpoint (ours or the original .pth)."""
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            return tuple(f.get_slice("llama_proj.weight").get_shape()) if "llama_proj.weight" in f.keys() else None
    raw = load_torch(path)
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict):
        raw = raw["model"]
    w = raw.get("llama_proj.weight") if isinstance(raw, dict) else None
    return tuple(w.shape) if torch.is_tensor(w) else None


def llm_hidden_size(llama_model) -> int | None:
    cfg_file = Path(str(llama_model)) / "config.json"
    if not cfg_file.is_file():
        return None
    cfg = json.loads(cfg_file.read_text())
    cfg = cfg.get("text_config", cfg)
    return cfg.get("hidden_size")


def check_model_files(model_cfg) -> None:
    """``model.ckpt`` must exist and fit the LLM's hidden size (when both can be read cheaply)."""
    if not model_cfg.get("ckpt"):
        return
    path = require_file(model_cfg.get("ckpt"), "ckpt")
    shape = projection_shape(path)
    if shape is None:
        raise CheckpointError(f"model.ckpt {path}: no llama_proj.weight in the file; it is not a MiniGPT-4 "
                              "projection checkpoint")
    hidden = llm_hidden_size(model_cfg.get("llama_model")) if model_cfg.get("llama_model") else None
    if hidden is not None and shape[0] != hidden:
        raise CheckpointError(f"model.ckpt {path}: llama_proj.weight is {list(shape)}, made for an LLM with hidden "
                              f"size {shape[0]}, but model.llama_model has hidden size {hidden}; use the "
                              "checkpoint trained for this LLM")


REQUIRED_RUN_KEYS = ("task", "init_lr", "min_lr", "max_epoch", "iters_per_epoch", "batch_size_train", "output_dir")


def check_run(run_cfg) -> None:
    """Required ``run`` keys are present and the named task, runner and LR schedule exist."""
    from minigpt4.common.config import ConfigError
    from minigpt4.common.registry import registry

    try:  # a runner that counts its epochs in passes over the data derives iters_per_epoch itself
        runner = registry.get_runner_class(run_cfg.get("runner", "runner_base"))
    except KeyError as e:
        raise ConfigError(f"run.runner: {e.args[0]}") from None
    derived = ("iters_per_epoch",) if getattr(runner, "derives_iters_per_epoch", False) else ()
    for key in REQUIRED_RUN_KEYS:
        if key not in derived and run_cfg.get(key) is None:
            raise ConfigError(f"run.{key} is required for training")
    for key, kind, default in (("task", "task", None), ("lr_sched", "lr_scheduler", "linear_warmup_cosine_lr")):
        try:
            getattr(registry, f"get_{kind}_class")(run_cfg.get(key, default))
        except KeyError as e:
            raise ConfigError(f"run.{key}: {e.args[0]}") from None
    from minigpt4.runners.parallel import parallel_mode

    parallel_mode(run_cfg)
    for key in ("max_epoch", "iters_per_epoch", "batch_size_train"):
        if run_cfg.get(key) is not None and run_cfg.get(key) < 1:
            raise ConfigError(f"run.{key} must be >= 1, got {run_cfg.get(key)}")
