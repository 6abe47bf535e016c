"""Image transforms of classifier training (torchvision): ``classifier_image_train`` (RandomResizedCrop +
horizontal flip) and ``classifier_image_eval`` (Resize to ``image_size / crop_pct`` + CenterCrop), ImageNet
mean/std by default."""
from __future__ import annotations

from torchvision import transforms
from torchvision.transforms import InterpolationMode

from minigpt4.common.registry import registry
from minigpt4.processors.blip_processors import _ImageProcessor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@registry.register_processor("classifier_image_train")
class ClassifierImageTrainProcessor(_ImageProcessor):
    def __init__(self, image_size=224, min_scale=0.08, max_scale=1.0, hflip=0.5, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD):
        steps = [transforms.RandomResizedCrop(image_size, scale=(min_scale, max_scale),
                                              interpolation=InterpolationMode.BILINEAR)]
        if hflip:
            steps.append(transforms.RandomHorizontalFlip(float(hflip)))
        super().__init__(transforms.Compose(steps), mean=mean, std=std)

    @classmethod
    def from_config(cls, cfg=None):
        cfg = cfg or {}
        return cls(image_size=cfg.get("image_size", 224), min_scale=cfg.get("min_scale", 0.08),
                   max_scale=cfg.get("max_scale", 1.0), hflip=cfg.get("hflip", 0.5),
                   mean=tuple(cfg.get("mean", IMAGENET_MEAN)), std=tuple(cfg.get("std", IMAGENET_STD)))


@registry.register_processor("classifier_image_eval")
class ClassifierImageEvalProcessor(_ImageProcessor):
    def __init__(self, image_size=224, crop_pct=0.875, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        resize = int(round(image_size / crop_pct))
        t = transforms.Compose([transforms.Resize(resize, interpolation=InterpolationMode.BILINEAR),
                                transforms.CenterCrop(image_size)])
        super().__init__(t, mean=mean, std=std)

    @classmethod
    def from_config(cls, cfg=None):
        cfg = cfg or {}
        return cls(image_size=cfg.get("image_size", 224), crop_pct=cfg.get("crop_pct", 0.875),
                   mean=tuple(cfg.get("mean", IMAGENET_MEAN)), std=tuple(cfg.get("std", IMAGENET_STD)))
