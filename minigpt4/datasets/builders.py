"""Dataset builders: ``Builder(datasets.<name> config block).build_datasets() -> {"train": dataset}``.

Registered names as in the original: ``laion`` and ``cc_sbu`` (webdataset shards, stage 1) and
``cc_sbu_align`` (folder with filter_cap.json, stage 2). Keys read from the block, with their types, defaults
and ranges, are declared by ``minigpt4.common.sections.DatasetConfig`` (a builder declares its own as
``CONFIG``): ``build_info.storage``, ``vis_processor.train``, ``text_processor.train``, ``resampled``,
``shuffle_buffer``, ``sample_ratio``, ``batch_size`` / ``num_workers`` (optional per-dataset overrides),
``max_image_pixels`` (null: Pillow's own limit only),
``feature_store`` (a folder written by ``python -m minigpt4.features extract``; default none: pixels).
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from minigpt4.common.config import resolve_path
from minigpt4.common.fields import typed
from minigpt4.common.registry import registry
from minigpt4.common.sections import DatasetConfig
from minigpt4.datasets.align import CCSBUAlignDataset
from minigpt4.datasets.storage import expand_storage
from minigpt4.datasets.webdata import WebImageTextDataset
from minigpt4.errors import ConfigError
from minigpt4.images import DEFAULT_MAX_IMAGE_PIXELS
from minigpt4.processors import build_processor


class BaseDatasetBuilder:
    name = ""
    DATASET_CONFIG_DICT: dict[str, str] = {}
    CONFIG = DatasetConfig

    def __init__(self, cfg=None):
        if cfg is None:
            path = Path(registry.get_path("library_root")) / self.DATASET_CONFIG_DICT["default"]
            cfg = OmegaConf.load(path).datasets[self.name]
        self.config = typed(self.CONFIG, cfg, f"datasets.{self.name}")

    # ------------------------------------------------------------------ pieces
    def _key(self, key: str) -> str:
        return f"datasets.{self.name}.{key}"

    def build_processors(self):
        """(vis processor, text processor) from ``vis_processor.train`` / ``text_processor.train``."""
        vis_cfg = OmegaConf.select(self.config, "vis_processor.train")
        if vis_cfg is None:
            raise ConfigError(f"{self._key('vis_processor.train')} is required, e.g. "
                              f"{{name: blip2_image_train, image_size: 224}}")
        text_cfg = OmegaConf.select(self.config, "text_processor.train")
        return build_processor(vis_cfg), build_processor(text_cfg)

    def storage(self):
        storage = OmegaConf.select(self.config, "build_info.storage")
        if storage is None:
            raise ConfigError(f"{self._key('build_info.storage')} is not set")
        return OmegaConf.to_object(storage) if OmegaConf.is_config(storage) else storage

    def max_image_pixels(self) -> int | None:
        value = self.config.max_image_pixels
        if value is not None and value < 1:
            raise ConfigError(f"{self._key('max_image_pixels')} must be >= 1 (or null for no limit), got {value}")
        return value

    def _annotate(self, dataset):
        dataset.name = self.name
        dataset.sample_ratio = self.config.sample_ratio
        dataset.batch_size = self.config.batch_size
        dataset.num_workers = self.config.num_workers
        return dataset

    def build(self):
        raise NotImplementedError

    def attach_feature_store(self, dataset):
        """``feature_store``: read the frozen tower's outputs from that store instead of decoding images."""
        folder = self.config.get("feature_store", None)
        if folder:
            from minigpt4.features.store import FeatureStore

            store = FeatureStore(resolve_path(folder), where=self._key("feature_store"))
            store.check_processor(OmegaConf.select(self.config, "vis_processor.train"),
                                  self._key("vis_processor.train"))
            dataset.feature_store = store
        return dataset

    def build_datasets(self) -> dict:
        return {"train": self._annotate(self.attach_feature_store(self.build()))}


class WebImageTextBuilder(BaseDatasetBuilder):
    def build(self):
        vis, text = self.build_processors()
        shuffle_buffer = self.config.shuffle_buffer
        if shuffle_buffer < 0:
            raise ConfigError(f"{self._key('shuffle_buffer')} must be >= 0, got {shuffle_buffer}")
        return WebImageTextDataset(expand_storage(self.name, self.storage()), vis, text, name=self.name,
                                   resampled=self.config.resampled, shuffle_buffer=shuffle_buffer,
                                   max_image_pixels=self.max_image_pixels())


@registry.register_builder("laion")
class LaionBuilder(WebImageTextBuilder):
    name = "laion"
    DATASET_CONFIG_DICT = {"default": "configs/datasets/laion/defaults.yaml"}


@registry.register_builder("cc_sbu")
class CCSBUBuilder(WebImageTextBuilder):
    name = "cc_sbu"
    DATASET_CONFIG_DICT = {"default": "configs/datasets/cc_sbu/defaults.yaml"}


@registry.register_builder("cc_sbu_align")
class CCSBUAlignBuilder(BaseDatasetBuilder):
    name = "cc_sbu_align"
    DATASET_CONFIG_DICT = {"default": "configs/datasets/cc_sbu/align.yaml"}

    def build(self):
        vis, text = self.build_processors()
        storage = self.storage()
        if not isinstance(storage, str):
            raise ConfigError(f"{self._key('build_info.storage')} must be one folder, got {storage!r}")
        return CCSBUAlignDataset(resolve_path(storage), vis, text, name=self.name,
                                 max_image_pixels=self.max_image_pixels())
