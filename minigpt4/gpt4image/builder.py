"""Dataset builder ``gpt4image_folder``: a training folder joined by key to its description embeddings, plus an
optional validation folder.

    datasets:
      gpt4image_folder:
        build_info:
          train: data/train            # ROOT/<class>/<image>
          train_list: null             # optional CSV (path,label) / JSONL list instead of scanning the folder
          val: data/val                # optional; top-1/top-5 on it after every epoch
          val_list: null
          embeddings: data/train.safetensors   # python -m minigpt4.gpt4image.embed --out ...
        vis_processor:
          train: {name: classifier_image_train, image_size: 224}
          eval: {name: classifier_image_eval, image_size: 224}
        missing_description: skip      # or error
        shuffle_descriptions: false    # control: every image gets another image's description

Without ``embeddings`` (only allowed with ``model.lambda: 0``) the split has labels only.
"""
from __future__ import annotations

import json
import logging

from omegaconf import OmegaConf

from dataclasses import dataclass
from typing import Optional

from minigpt4.common.config import resolve_path
from minigpt4.common.fields import key
from minigpt4.common.sections import DatasetConfig
from minigpt4.common.registry import registry
from minigpt4.datasets.builders import BaseDatasetBuilder
from minigpt4.errors import ConfigError
from minigpt4.gpt4image.data import DescribedImageFolder, read_embeddings, read_list, scan_folder
from minigpt4.processors import build_processor

log = logging.getLogger(__name__)


@dataclass
class FolderBuildInfo:
    train: Optional[str] = key(None, "training folder ROOT/<class>/<image>")
    train_list: Optional[str] = key(None, "CSV (path,label) or JSONL list of the training images")
    val: Optional[str] = key(None, "validation folder (top-1/top-5 after every epoch)")
    val_list: Optional[str] = key(None, "list of the validation images")
    embeddings: Optional[str] = key(None, "description embeddings (python -m minigpt4.gpt4image.embed)")


@dataclass
class FolderConfig(DatasetConfig):
    """``datasets.gpt4image_folder:``"""
    build_info: FolderBuildInfo = key(FolderBuildInfo(), "where the images and embeddings are")
    missing_description: str = key("skip", "an image without description: skip or error", choices=("skip", "error"))
    shuffle_descriptions: bool = key(False, "control: every image gets another image's description")
    seed: int = key(0, "seed of shuffle_descriptions")


@registry.register_builder("gpt4image_folder")
class DescribedFolderBuilder(BaseDatasetBuilder):
    name = "gpt4image_folder"
    DATASET_CONFIG_DICT = {"default": "configs/datasets/gpt4image/folder.yaml"}
    CONFIG = FolderConfig

    def _info(self, key: str):
        return OmegaConf.select(self.config, f"build_info.{key}")

    def _rows(self, split: str):
        folder, listing = self._info(split), self._info(f"{split}_list")
        if folder is None:
            return None, None
        root = resolve_path(folder)
        if listing:
            return root, read_list(resolve_path(listing), root, self._key(f"build_info.{split}_list"))
        return root, scan_folder(root, self._key(f"build_info.{split}"))

    def _processor(self, split: str):
        cfg = OmegaConf.select(self.config, f"vis_processor.{split}")
        if cfg is None:
            raise ConfigError(f"{self._key(f'vis_processor.{split}')} is required, e.g. "
                              f"{{name: classifier_image_{split}, image_size: 224}}")
        return build_processor(cfg)

    def build_datasets(self) -> dict:
        root, rows = self._rows("train")
        if root is None:
            raise ConfigError(f"{self._key('build_info.train')} is not set (a folder ROOT/<class>/<image>)")
        classes = sorted({c for _, c in rows})
        if self.config.shuffle_descriptions and not self._info("embeddings"):
            raise ConfigError(f"{self._key('shuffle_descriptions')} needs descriptions to shuffle: set "
                              f"{self._key('build_info.embeddings')}")
        embeddings, meta = None, {}
        if self._info("embeddings"):
            keys, emb, meta = read_embeddings(resolve_path(self._info("embeddings")),
                                              self._key("build_info.embeddings"))
            embeddings = (keys, emb)
        common = dict(name=self.name, what=self._key("")[:-1])
        train = DescribedImageFolder(root, rows, classes, self._processor("train"), embeddings=embeddings,
                                     missing_description=self.config.missing_description,
                                     shuffle_descriptions=self.config.shuffle_descriptions,
                                     seed=self.config.seed, **common)
        train.embedding_meta = {k: v for k, v in meta.items() if k not in ("keys", "labels")}
        train.embedding_meta.update(path=str(self._info("embeddings")) if embeddings is not None else None)
        out = {"train": self._annotate(train)}
        val_root, val_rows = self._rows("val")
        if val_root is not None:
            out["val"] = DescribedImageFolder(val_root, val_rows, classes, self._processor("eval"), **common)
        log.info("%s: %d training images in %d classes%s%s", self.name, len(train), len(classes),
                 f", {len(out['val'])} validation images" if "val" in out else "",
                 f", text embeddings of dim {train.text_dim} ({json.dumps(meta.get('encoder', '?'))})"
                 if embeddings is not None else "")
        return out
