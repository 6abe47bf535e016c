"""Cheap checks that run before any model is built, so a wrong path or a mismatched checkpoint is a
one-line error in seconds instead of a traceback after minutes of loading."""
from __future__ import annotations

from pathlib import Path

from minigpt4.models import weight_files as files
from minigpt4.models.checkpoint import read_trainable
from minigpt4.models.hf_folder import check_blip2_folder, check_causal_lm_folder
from minigpt4.models.weight_files import CheckpointError, require_file, require_folder

MINIGPT4_ARCHS = ("minigpt4", "mini_gpt4")


def check_model_files(model_cfg, frozen_parts: bool | None = None) -> int | None:
    """Every weight file the model section names is read as far as is cheap (configs, headers, pickles with
    their tensor data mapped, not read) before anything is built: a missing, wrong-kind, empty, truncated,
    foreign or refused file is a one-line :class:`CheckpointError` naming the key and the file, and
    ``model.ckpt`` must hold finite weights that fit the LLM. ``frozen_parts`` (default: a MiniGPT-4 ``arch``)
    includes the LLM folder, ``vit_ckpt`` and ``q_former_model``. Returns the LLM's hidden size when read."""
    get = model_cfg.get
    if frozen_parts is None:
        frozen_parts = get("arch") in MINIGPT4_ARCHS
    hidden = check_frozen_files(model_cfg) if frozen_parts else llm_hidden_size(get("llama_model"))
    if get("ckpt"):
        check_projection(require_file(get("ckpt"), "ckpt"), hidden)
    return hidden


def check_frozen_files(model_cfg) -> int | None:
    get = model_cfg.get
    folder = require_folder(get("llama_model"), "llama_model")
    config = check_causal_lm_folder(folder, "model.llama_model")
    qsrc = get("q_former_model") if get("has_qformer", True) else None
    blip2_folder = False
    if qsrc:
        path = require_file(qsrc, "q_former_model")
        from minigpt4.models.vision import check_blip2_source

        check_blip2_source(path)
        blip2_folder = path.is_dir()
        if blip2_folder:
            check_blip2_folder(path, "model.q_former_model")
        else:
            _require_keys(path, "q_former_model", ("model",), ("Qformer.", "query_tokens"), "a BLIP-2 checkpoint")
    if get("vit_ckpt"):
        _require_keys(require_file(get("vit_ckpt"), "vit_ckpt"), "vit_ckpt", (), ("patch_embed.", "blocks."),
                      "an EVA-ViT checkpoint (eva_vit_g.pth)")
    elif not blip2_folder:
        require_file(None, "vit_ckpt")
    return _hidden_size(config)


def _require_keys(path: Path, key: str, unwrap: tuple, prefixes: tuple, kind: str) -> None:
    name = files.label(path, f"model.{key}")
    state = files.tensor_dict(files.load_torch(path, f"model.{key}", mmap=True), name, unwrap)
    if not any(str(k).startswith(prefixes) for k in state):
        raise CheckpointError(f"{name}: no {' / '.join(p.rstrip('.') + '*' for p in prefixes)} weights; "
                              f"not {kind} (it has {sorted(map(str, state))[:3]}...)")


def _hidden_size(config: dict) -> int | None:
    return (config.get("text_config") or config).get("hidden_size")


def llm_hidden_size(llama_model) -> int | None:
    """``hidden_size`` from the LLM folder's config.json, when there is one to read."""
    cfg_file = Path(str(llama_model)) / "config.json" if llama_model else None
    if cfg_file is None or not cfg_file.is_file():
        return None
    return _hidden_size(files.read_json(cfg_file, f"model.llama_model {cfg_file.parent}"))


def check_projection(path: Path, hidden: int | None) -> None:
    """``model.ckpt``: readable, finite, with a ``llama_proj.weight`` that fits an LLM of ``hidden`` size."""
    state, _ = read_trainable(path, "model.ckpt")
    weight = state.get("llama_proj.weight")
    if weight is None:
        raise CheckpointError(f"model.ckpt {path}: no llama_proj.weight in the file; it is not a MiniGPT-4 "
                              "projection checkpoint")
    shape = tuple(weight.shape)
    if hidden is not None and shape[0] != hidden:
        raise CheckpointError(f"model.ckpt {path}: llama_proj.weight is {list(shape)}, made for an LLM with hidden "
                              f"size {shape[0]}, but model.llama_model has hidden size {hidden}; use the "
                              "checkpoint trained for this LLM")


REQUIRED_RUN_KEYS = ("task", "init_lr", "min_lr", "max_epoch", "iters_per_epoch", "batch_size_train", "output_dir")


def check_run(run_cfg) -> None:
    """Required ``run`` keys are present and the named task, runner and LR schedule exist."""
    from minigpt4.common.config import ConfigError
    from minigpt4.common.fields import typed
    from minigpt4.common.registry import registry
    from minigpt4.common.sections import RunConfig

    run_cfg = typed(RunConfig, run_cfg, "run")
    # a runner that counts its epochs in passes over the data derives iters_per_epoch itself
    runner = registry.get_runner_class(run_cfg.runner, key="run.runner")
    derived = ("iters_per_epoch",) if getattr(runner, "derives_iters_per_epoch", False) else ()
    for key in REQUIRED_RUN_KEYS:
        if key not in derived and run_cfg.get(key) is None:
            raise ConfigError(f"run.{key} is required for training")
    for key, kind in (("task", "task"), ("lr_sched", "lr_scheduler")):
        getattr(registry, f"get_{kind}_class")(run_cfg[key], key=f"run.{key}")
    from minigpt4.runners.parallel import parallel_mode

    parallel_mode(run_cfg)
    for key in ("max_epoch", "iters_per_epoch", "batch_size_train"):
        if run_cfg.get(key) is not None and run_cfg.get(key) < 1:
            raise ConfigError(f"run.{key} must be >= 1, got {run_cfg.get(key)}")
