"""Datasets: the builders ``laion``, ``cc_sbu``, ``cc_sbu_align`` (registered on import) and the
training loader that mixes them by ``sample_ratio``."""
from minigpt4.datasets import builders  # noqa: F401  (registers the builders)
from minigpt4.datasets.align import CCSBUAlignDataset
from minigpt4.datasets.builders import BaseDatasetBuilder
from minigpt4.datasets.loader import TrainLoader, build_train_loader
from minigpt4.datasets.webdata import WebImageTextDataset

__all__ = ["BaseDatasetBuilder", "CCSBUAlignDataset", "TrainLoader", "WebImageTextDataset", "build_train_loader"]
