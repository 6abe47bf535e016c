"""The frozen language model and its tokenizer, from any local Hugging Face causal-LM folder.

Precision and placement come from the config: fp32 on CPU; fp16 (default) or bf16 on CUDA; 8-bit or
4-bit through bitsandbytes (``low_resource`` / ``load_in_4bit``) and ``device_map`` placement across
GPUs through accelerate, both CUDA-only and refused with a clear message elsewhere.
"""
from __future__ import annotations

import logging

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from minigpt4.errors import ConfigError
from minigpt4.models.weight_files import require_folder

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def parse_dtype(name: str | torch.dtype | None, device: torch.device, default_cuda=torch.float16) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name is None or name == "auto":
        return default_cuda if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)}")
    return DTYPES[name]


def load_tokenizer(path, pad_token: str = "$$"):
    folder = require_folder(path, "llama_model")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if pad_token is not None:
        tokenizer.pad_token = pad_token
    tokenizer.padding_side = "right"
    return tokenizer


def quantization_config(low_resource: bool, load_in_4bit: bool, device: torch.device):
    if not (low_resource or load_in_4bit):
        return None
    if device.type != "cuda":
        raise ConfigError("model.low_resource / model.load_in_4bit load the LLM through bitsandbytes and need a "
                          f"CUDA device (got {device}); set them to False on this machine")
    from transformers import BitsAndBytesConfig

    if load_in_4bit:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float16,
                                  bnb_4bit_quant_type="nf4")
    return BitsAndBytesConfig(load_in_8bit=True)


def load_llm(path, *, device: torch.device, dtype: torch.dtype, low_resource: bool = False,
             device_8bit=0, load_in_4bit: bool = False, device_map=None, attn_implementation=None):
    """Load the causal LM frozen: no gradients, eval mode. Returns the model on ``device``
    (or placed by ``device_map``/bitsandbytes)."""
    folder = require_folder(path, "llama_model")
    kwargs = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    quant = quantization_config(low_resource, load_in_4bit, device)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = device_map or {"": device_8bit if isinstance(device_8bit, str) else int(device_8bit)}
    elif device_map is not None:
        if device.type != "cuda":
            raise ConfigError(f"model.device_map={device_map!r} places the LLM across GPUs; no CUDA device here")
        kwargs["device_map"] = device_map
    model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    if "device_map" not in kwargs:
        model.to(device)
    model.requires_grad_(False)
    model.eval()
    log.info("LLM %s: %s, %.1fM parameters, %s", folder.name, type(model).__name__,
             sum(p.numel() for p in model.parameters()) / 1e6, dtype)
    return model
