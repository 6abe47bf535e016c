"""Helpers for the training tests: a tiny cc_sbu_align folder, configs around the micro fixture model,
and a minimal in-memory loader with the TrainLoader interface."""
from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from omegaconf import OmegaConf
from PIL import Image, ImageDraw

from minigpt4.testing.golden import fixture_dirs, model_cfg

REPO = Path(__file__).resolve().parents[1]
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square")


def write_align_folder(root: Path, n: int = 8, seed: int = 0) -> Path:
    """A cc_sbu_align-format folder: ``filter_cap.json`` + ``image/<id>.jpg``, captions of varying length."""
    rng = random.Random(seed)
    (root / "image").mkdir(parents=True, exist_ok=True)
    annotations = []
    for i in range(n):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        img = Image.new("RGB", (64, 48), (255, 255, 255))
        draw = ImageDraw.Draw(img)
        box = (rng.randint(0, 20), rng.randint(0, 10), rng.randint(35, 60), rng.randint(30, 45))
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
        img.save(root / "image" / f"{i}.jpg", quality=95)
        extra = " on a white background" * (i % 3)
        annotations.append({"image_id": str(i), "caption": f"A {colour} {shape}{extra}."})
    (root / "filter_cap.json").write_text(json.dumps({"annotations": annotations}))
    return root


def model_block(**overrides) -> dict:
    block = OmegaConf.to_container(model_cfg(fixture_dirs()[0]))
    block.pop("device", None)
    block.update(overrides)
    return block


def train_config(data: Path, out: Path, **run) -> dict:
    """A stage-1-style config (no instruction prompt) on the micro fixture model and an align folder."""
    cfg = {
        "model": model_block(),
        "datasets": {"cc_sbu_align": {
            "build_info": {"storage": str(data)},
            "vis_processor": {"train": {"name": "blip2_image_eval", "image_size": 224}},
            "text_processor": {"train": {"name": "blip_caption"}}}},
        "run": {"task": "image_text_pretrain", "lr_sched": "linear_warmup_cosine_lr", "init_lr": 1e-2,
                "min_lr": 1e-3, "warmup_lr": 1e-4, "warmup_steps": 2, "weight_decay": 0.05, "max_epoch": 2,
                "iters_per_epoch": 3, "batch_size_train": 2, "num_workers": 0, "seed": 7,
                "output_dir": str(out), "job_id": "job", "amp": True, "device": "cpu", "distributed": True,
                "threads": 1, "log_freq": 1, "progress_bar": False, "tensorboard": True},
    }
    cfg["run"].update(run)
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def subprocess_env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_train(args: list[str], cwd: Path, nproc: int = 1, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-port", str(free_port()), str(REPO / "train.py"), *args]
    else:
        cmd = [sys.executable, str(REPO / "train.py"), *args]
    return subprocess.run(cmd, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout,
                          **popen)


class ListLoader:
    """The TrainLoader interface over an in-memory list of samples (sequential, infinite, resumable)."""

    def __init__(self, samples: list[dict], batch_size: int):
        self.samples, self.batch_size, self.pos = samples, batch_size, 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        rows = [self.samples[(self.pos + k) % len(self.samples)] for k in range(self.batch_size)]
        self.pos += self.batch_size
        return {"image": torch.stack([r["image"] for r in rows]), "answer": [r["answer"] for r in rows]}

    def state_dict(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.pos = state["pos"]

    def skip_counts(self) -> dict:
        return {}

    def close(self) -> None:
        pass


def train_in_process(args: list[str]) -> int:
    """``train.py`` in this process (saves a subprocess start); restores the torch thread count afterwards."""
    import train

    threads = torch.get_num_threads()
    try:
        return train.cli(args)
    finally:
        torch.set_num_threads(threads)
