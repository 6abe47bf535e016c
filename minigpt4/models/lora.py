"""Optional LoRA adapters on the frozen LLM, through ``peft`` (imported only when ``model.lora_r`` > 0).

``model.lora_r`` > 0 puts LoRA layers on the LLM's ``lora_target_modules`` (default ``q_proj``, ``v_proj``),
scaled by ``lora_alpha / lora_r``, with ``lora_dropout`` on their input while training. The base weights stay
frozen and untouched: the LLM's output changes only through the adapters. The adapters train together with
``llama_proj`` and are saved in the same trainable-only safetensors checkpoint, under their module names
(``llama_model.model.layers.0.self_attn.q_proj.lora_A.default.weight``); the JSON sidecar's ``lora`` entry
records ``r``, ``alpha``, ``dropout`` and ``target_modules``. Loading such a checkpoint needs the same LoRA
keys in the config; :func:`merge_into_llm` folds the adapters into the LLM's weights for export
(``python -m minigpt4.lora_export``).
"""
from __future__ import annotations

import dataclasses
import logging

import torch

from minigpt4.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_TARGETS = ("q_proj", "v_proj")
DEFAULT_DROPOUT = 0.05
ADAPTER = "default"
KEY_MARKER = ".lora_"  # every adapter weight's name contains it (lora_A, lora_B)


class LoraError(UserError, ValueError):
    """LoRA settings that cannot work (bad values, 8-bit on CPU, unknown target modules, missing peft)."""


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    r: int
    alpha: int
    dropout: float
    target_modules: tuple[str, ...]

    def to_meta(self) -> dict:
        return {"r": self.r, "alpha": self.alpha, "dropout": self.dropout, "target_modules": list(self.target_modules)}


def lora_settings(cfg, device: torch.device) -> LoraSettings | None:
    """The LoRA settings of a model config, or ``None`` when ``lora_r`` is 0/unset (the default)."""
    get = cfg.get
    r = get("lora_r", 0) or 0
    if not r:
        return None
    if not isinstance(r, int) or isinstance(r, bool) or r < 0:
        raise LoraError(f"model.lora_r must be a positive integer (0 = no LoRA), got {r!r}")
    alpha = get("lora_alpha", None) or r
    if not isinstance(alpha, int) or isinstance(alpha, bool) or alpha <= 0:
        raise LoraError(f"model.lora_alpha must be a positive integer, got {alpha!r}")
    dropout = get("lora_dropout", None)
    dropout = DEFAULT_DROPOUT if dropout is None else dropout
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise LoraError(f"model.lora_dropout must be a number in [0, 1), got {dropout!r}")
    targets = get("lora_target_modules", None) or list(DEFAULT_TARGETS)
    targets = list(targets)
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise LoraError(f"model.lora_target_modules must be a list of module names such as {list(DEFAULT_TARGETS)}, "
                        f"got {targets!r}")
    if (get("low_resource", False) or get("load_in_4bit", False)) and device.type != "cuda":
        raise LoraError(f"model.lora_r with model.low_resource / model.load_in_4bit (LoRA on a bitsandbytes LLM) "
                        f"needs a CUDA device, got {device}; set model.low_resource=False model.load_in_4bit=False")
    return LoraSettings(int(r), int(alpha), float(dropout), tuple(targets))


def add_lora(llm: torch.nn.Module, settings: LoraSettings):
    """Put LoRA layers into ``llm`` in place; only they train. Returns peft's tuner (kept for merging)."""
    try:
        from peft import LoraConfig, LoraModel
    except ImportError:
        raise LoraError("model.lora_r > 0 needs the peft package: pip install 'peft>=0.13,<1' "
                        "(or the minigpt4[lora] extra)") from None
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules), bias="none")
    try:
        tuner = LoraModel(llm, config, adapter_name=ADAPTER)
    except ValueError as exc:
        if "not found in the base model" in str(exc) or "Target modules" in str(exc):
            raise LoraError(f"model.lora_target_modules={list(settings.target_modules)}: none of them is a module "
                            f"of this LLM ({type(llm).__name__}); use names such as q_proj, k_proj, v_proj, "
                            f"o_proj") from None
        raise
    for name, p in llm.named_parameters():
        if KEY_MARKER in name:
            if p.dtype != torch.float32:  # adapters train in fp32 next to a half-precision base
                p.data = p.data.float()
            p.requires_grad_(True)
    n = sum(p.numel() for name, p in llm.named_parameters() if KEY_MARKER in name)
    log.info("LoRA r=%d alpha=%d dropout=%g on %s: %.3fM adapter parameters", settings.r, settings.alpha,
             settings.dropout, ",".join(settings.target_modules), n / 1e6)
    return tuner


def adapter_layers(llm: torch.nn.Module) -> list[torch.nn.Module]:
    from peft.tuners.lora import LoraLayer

    return [m for m in llm.modules() if isinstance(m, LoraLayer)]


def adapters_at_start(layers) -> bool:
    """True when every adapter of ``layers`` still has ``lora_B`` = 0 (untrained: the LLM is unchanged)."""
    return not any(bool(b.weight.any()) for layer in layers for b in layer.lora_B.values())


def has_adapter_keys(keys) -> bool:
    return any(KEY_MARKER in k for k in keys)


def check_checkpoint(settings: LoraSettings | None, state: dict, meta: dict, wanted, what: str) -> tuple[str, ...]:
    """Check a trainable checkpoint against the model's LoRA settings; returns the keys it must provide.

    Adapter weights in the file need the same ``lora_r``/``lora_alpha``/``lora_target_modules`` in the config;
    a file without adapters (a projection-only stage 1) leaves a LoRA model's adapters at their start
    (``lora_B`` = 0: the LLM behaves as without them)."""
    from minigpt4.models.checkpoint import CheckpointError

    in_file = has_adapter_keys(state)
    saved = meta.get("lora") or {}
    if settings is None:
        if in_file:
            how = (f" (lora_r={saved.get('r')}, lora_alpha={saved.get('alpha')}, "
                   f"lora_target_modules={saved.get('target_modules')})" if saved else "")
            raise CheckpointError(f"{what} holds LoRA adapter weights{how} but model.lora_r is not set; set the "
                                  f"LoRA keys it was trained with, or merge the adapters into the LLM with "
                                  f"python -m minigpt4.lora_export")
        return tuple(wanted)
    if not in_file:
        log.warning("%s has no LoRA adapter weights: the adapters start fresh (lora_B = 0)", what)
        return tuple(k for k in wanted if KEY_MARKER not in k)
    mine = settings.to_meta()
    for key, name in (("r", "lora_r"), ("alpha", "lora_alpha"), ("target_modules", "lora_target_modules")):
        if key in saved and _same(saved[key]) != _same(mine[key]):
            raise CheckpointError(f"{what}: trained with model.{name}={saved[key]!r} but the config has "
                                  f"model.{name}={mine[key]!r}; use the training values")
    return tuple(wanted)


def _same(value):
    return sorted(value) if isinstance(value, list) else value


def merge_into_llm(tuner) -> torch.nn.Module:
    """The LLM with every adapter folded into its base weights and the LoRA layers removed (peft's
    ``merge_and_unload``). The model the adapters belonged to can no longer be used afterwards."""
    return tuner.merge_and_unload()
