"""A user-style YAML config for the golden fixture's micro model, for the inference entry points."""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf
from PIL import Image, ImageDraw

from fixture_utils import FIXTURES, model_cfg

FX = FIXTURES / "minigpt4_tiny"


def write_config(folder: Path, **model_overrides) -> Path:
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
