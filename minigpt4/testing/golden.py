"""Golden fixtures produced by the original implementation (see tests/fixtures/*/README.md, in a clone), the
configs around their micro model, and small deterministic pictures.

``MINIGPT4_FIXTURES`` (os.pathsep-separated folders) adds more sets in the same format."""
from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import torch
from omegaconf import OmegaConf
from PIL import Image, ImageDraw

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
FX = FIXTURES / "minigpt4_tiny"


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


def write_config(folder: Path, **model_overrides) -> Path:
    """A user-style YAML config for the micro model, for the inference entry points (``FOLDER/fixture_eval.yaml``)."""
    model = OmegaConf.to_container(model_cfg(FX))
    model.pop("device")
    model.update({"prompt_template": "###Human: {} ###Assistant: ", "end_sym": "###", "max_txt_len": 160})
    model.update(model_overrides)
    cfg = {"model": model, "run": {"device": "cpu"},
           "preprocess": {"vis_processor": {"eval": {"name": "blip2_image_eval", "image_size": 224}}}}
    path = Path(folder) / "fixture_eval.yaml"
    OmegaConf.save(OmegaConf.create(cfg), path)
    return path


COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "cyan", "pink"]


def draw_scene(i: int, size: int = 96) -> Image.Image:
    """A small deterministic picture: background and shape vary with ``i``."""
    img = Image.new("RGB", (size, size), COLORS[(i * 3 + 1) % len(COLORS)])
    draw = ImageDraw.Draw(img)
    box = (8 + 4 * (i % 5), 10 + 3 * (i % 7), size - 10 - 2 * (i % 4), size - 6 - 5 * (i % 3))
    (draw.ellipse if i % 2 else draw.rectangle)(box, fill=COLORS[i % len(COLORS)])
    return img
