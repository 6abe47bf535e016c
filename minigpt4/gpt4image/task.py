"""Task ``image_classification``: one ``gpt4image_folder`` dataset block -> train (+ val) splits, and the
classifier built with the class count, class names and text dimension that the data gives."""
from __future__ import annotations

from minigpt4.common.registry import registry
from minigpt4.errors import ConfigError
from minigpt4.tasks.base_task import BaseTask


@registry.register_task("image_classification")
class ImageClassificationTask(BaseTask):
    def build_datasets(self, cfg) -> dict:
        if cfg.datasets_cfg is not None and len(cfg.datasets_cfg) > 1:
            raise ConfigError(f"datasets: image_classification trains on one dataset block, got "
                              f"{list(cfg.datasets_cfg)}")
        self.datasets = super().build_datasets(cfg)
        return self.datasets

    def build_model(self, cfg, device=None):
        (splits,) = self.datasets.values()
        train = splits["train"]
        if device is None:
            device = cfg.run_cfg.get("device") if cfg.run_cfg is not None else None
        model = registry.get_model_class(cfg.model_cfg.arch, key="model.arch").from_config(
            cfg.model_cfg, device=device, num_classes=len(train.classes), text_dim=train.text_dim,
            class_names=train.classes)
        check_input_size(model, splits, next(iter(self.datasets)))
        return model


def check_input_size(model, splits: dict, name: str) -> None:
    """A backbone built for one input size (a ViT's patch grid) must get that size from every split's processor."""
    embed = getattr(getattr(model, "backbone", None), "patch_embed", None)
    if embed is None or not getattr(embed, "strict_img_size", False) or getattr(embed, "dynamic_img_size", False):
        return
    want = tuple(embed.img_size)
    for split, data in splits.items():
        side = getattr(getattr(data, "transform", None), "image_size", None)
        if side is not None and (side, side) != want:
            raise ConfigError(f"datasets.{name}.vis_processor.{'train' if split == 'train' else 'eval'}.image_size "
                              f"is {side} but the backbone takes {want[0]}x{want[1]} images: set model.img_size "
                              f"to {side}, or the processor's image_size to {want[0]}")
