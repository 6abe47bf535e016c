"""Golden fixtures produced by the original implementation (see tests/fixtures/*/README.md).

``MINIGPT4_FIXTURES`` (os.pathsep-separated folders) adds more sets in the same format."""
from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import torch
from omegaconf import OmegaConf

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_dirs() -> list[Path]:
    dirs = [FIXTURES / "minigpt4_tiny"]
    dirs += [Path(p) for p in os.environ.get("MINIGPT4_FIXTURES", "").split(os.pathsep) if p]
    return dirs


@lru_cache(maxsize=None)
def expected(fx: Path) -> dict:
    return torch.load(fx / "expected.pt", weights_only=True)


@lru_cache(maxsize=None)
def inputs(fx: Path) -> dict:
    return torch.load(fx / "inputs.pt", weights_only=True)


def fixture_config(fx: Path) -> dict:
    return json.loads((fx / "config.json").read_text())


def model_cfg(fx: Path, **overrides):
    """The model config a user writes for this fixture folder: paths plus the sizes from config.json."""
    c = fixture_config(fx)
    ve, q = c["vision_encoder"], c["qformer"]
    cfg = {
        "arch": "minigpt4",
        "device": "cpu",
        "vit_ckpt": str(fx / "eva_vit.pth"),
        "q_former_model": str(fx / "blip2_qformer.pth"),
        "llama_model": str(fx / "llm"),
        "ckpt": str(fx / "minigpt4_proj.pth"),
        "image_size": ve["img_size"],
        "vit_config": {"hidden_size": ve["embed_dim"], "intermediate_size": ve["mlp_hidden"],
                       "num_hidden_layers": ve["depth"], "num_attention_heads": ve["num_heads"],
                       "patch_size": ve["patch_size"]},
        "qformer_config": {"hidden_size": q["hidden_size"], "num_hidden_layers": q["num_hidden_layers"],
                           "num_attention_heads": q["num_attention_heads"],
                           "intermediate_size": q["intermediate_size"],
                           "cross_attention_frequency": q["cross_attention_freq"],
                           "layer_norm_eps": q["layer_norm_eps"]},
        "num_query_token": q["num_query_token"],
    }
    cfg.update(overrides)
    return OmegaConf.create(cfg)
