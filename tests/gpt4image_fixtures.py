"""Small image folders, embedding files (in the embed step's format) and configs for the GPT4Image tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from minigpt4.gpt4image.embeddings import save_embeddings

CLASSES = ("circle", "square", "triangle")


def make_folder(root: Path, per_class: int = 4, size: int = 32, classes=CLASSES, seed: int = 0) -> list[str]:
    """``root/<class>/<i>.png`` with a class-dependent colour plus noise; returns the keys (sorted)."""
    rng = np.random.default_rng(seed)
    keys = []
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.zeros((size, size, 3), dtype=np.float32)
            base[..., c % 3] = 200
            pixels = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
            keys.append(f"{name}/{i:03d}.png")
    return sorted(keys)


def write_embeddings(path: Path, keys: list[str], dim: int = 16, seed: int = 0, shuffle: bool = True) -> torch.Tensor:
    """An embed-step file for ``keys`` (stored in a shuffled order when ``shuffle``). Returns the embedding of
    each key in the order of ``keys`` (a row is a function of the key, so tests can check the join)."""
    emb = torch.stack([key_vector(k, dim, seed) for k in keys])
    order = list(range(len(keys)))
    if shuffle:
        order = torch.randperm(len(keys), generator=torch.Generator().manual_seed(seed + 1)).tolist()
    save_embeddings(path, [keys[i] for i in order], [keys[i].split("/")[0] for i in order], emb[order],
                    encoder="test-encoder", kind="test")
    return emb


def key_vector(key: str, dim: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 100003 + sum(ord(ch) * (i + 1) for i, ch in enumerate(key)))
    return torch.nn.functional.normalize(torch.randn(dim, generator=g), dim=0)


def train_config(tmp: Path, train: Path, embeddings: Path | None, *, val: Path | None = None, backbone="resnet10t",
                 lam=0.3, batch_size=4, max_epoch=1, image_size=32, extra_model=None, extra_run=None,
                 extra_data=None) -> Path:
    model = {"arch": "gpt4image_classifier", "backbone": backbone, "lambda": lam, "tau": 0.2, "align_loss": "clip"}
    model.update(extra_model or {})
    data = {"build_info": {"train": str(train), **({"val": str(val)} if val else {}),
                           **({"embeddings": str(embeddings)} if embeddings else {})},
            "vis_processor": {"train": {"name": "classifier_image_train", "image_size": image_size, "hflip": 0.0,
                                        "min_scale": 0.8},
                              "eval": {"name": "classifier_image_eval", "image_size": image_size, "crop_pct": 1.0}}}
    data.update(extra_data or {})
    run = {"task": "image_classification", "runner": "runner_classifier", "lr_sched": "linear_warmup_cosine_lr",
           "optimizer": "sgd", "momentum": 0.9, "init_lr": 0.05, "min_lr": 0.0, "weight_decay": 1e-4,
           "max_epoch": max_epoch, "batch_size_train": batch_size, "batch_size_eval": 8, "num_workers": 0,
           "seed": 7, "output_dir": str(tmp / "out"), "job_id": "job", "device": "cpu", "threads": 1,
           "log_freq": 1, "tensorboard": False, "progress_bar": False, "distributed": True}
    run.update(extra_run or {})
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump({"model": model, "datasets": {"gpt4image_folder": data}, "run": run}))
    return path
