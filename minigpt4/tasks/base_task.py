"""A task turns a config into datasets and a model. ``image_text_pretrain`` is the only task MiniGPT-4 needs;
the runner does the training loop, so a task stays a thin, readable piece of wiring."""
from __future__ import annotations

import logging

import torch

from minigpt4.common.registry import registry
from minigpt4.errors import ConfigError

log = logging.getLogger(__name__)


class BaseTask:
    """Builds datasets through the builder registry and the model through the model registry."""

    @classmethod
    def setup_task(cls, cfg=None):
        return cls()

    def build_datasets(self, cfg) -> dict:
        """``{name: {"train": dataset}}`` for every block under ``datasets``; each train dataset gets
        ``.name`` and ``.sample_ratio`` (default 1) from its block, as the original does."""
        datasets_cfg = cfg.datasets_cfg
        if not datasets_cfg or len(datasets_cfg) == 0:
            raise ConfigError("datasets: at least one dataset block is required for training")
        out = {}
        for name in datasets_cfg:
            block = datasets_cfg[name]
            builder = registry.get_builder_class(name, key=f"datasets.{name}")(block)
            splits = builder.build_datasets()
            train = splits.get("train") if isinstance(splits, dict) else None
            if train is None:
                raise ConfigError(f"datasets.{name}: the builder produced no 'train' split")
            ratio = block.get("sample_ratio", 1)
            if ratio is None or ratio <= 0:
                raise ConfigError(f"datasets.{name}.sample_ratio must be > 0, got {ratio!r}")
            train.name = name
            train.sample_ratio = ratio
            out[name] = splits
            log.info("dataset %s: sample_ratio %s", name, ratio)
        return out

    def build_model(self, cfg, device: str | torch.device | None = None):
        model_cfg = cfg.model_cfg
        if device is None:
            device = cfg.run_cfg.device if cfg.run_cfg is not None else None
        return registry.get_model_class(model_cfg.arch, key="model.arch").from_config(model_cfg, device=device)


@registry.register_task("image_text_pretrain")
class ImageTextPretrainTask(BaseTask):
    """Stage 1 (image-caption alignment) and stage 2 (instruction fine-tuning) alike: the loss is the
    model's own language-modelling loss on the answer tokens."""
