"""Image transforms of classifier training (torchvision): ``classifier_image_train`` (RandomResizedCrop +
horizontal flip) and ``classifier_image_eval`` (Resize to ``image_size / crop_pct`` + CenterCrop), ImageNet
mean/std by default."""
from __future__ import annotations

from dataclasses import dataclass

from torchvision import transforms
from torchvision.transforms import InterpolationMode

from minigpt4.common.fields import key
from minigpt4.common.registry import registry
from minigpt4.processors.base import rgb_triple, settings
from minigpt4.processors.blip_processors import _ImageProcessor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_SIDE = 8192  # a larger training side is a typo (a batch of 100,000-pixel squares does not fit in memory)


@registry.register_processor("classifier_image_train")
class ClassifierImageTrainProcessor(_ImageProcessor):
    @dataclass
    class Config:
        image_size: int = key(224, "output side in pixels", ge=1, le=MAX_SIDE)
        min_scale: float = key(0.08, "smallest crop area fraction", gt=0, le=1)
        max_scale: float = key(1.0, "largest crop area fraction", gt=0, le=1)
        hflip: float = key(0.5, "horizontal flip probability", ge=0, le=1)
        mean: list = key(list(IMAGENET_MEAN), "per-channel mean", check=rgb_triple)
        std: list = key(list(IMAGENET_STD), "per-channel std", check=rgb_triple)

        @staticmethod
        def check_together(c: dict) -> str | None:
            if c["min_scale"] > c["max_scale"]:
                return (f"min_scale {c['min_scale']} must be <= max_scale {c['max_scale']} (the range of the "
                        "random crop's area fraction)")
            return None

    def __init__(self, image_size=224, min_scale=0.08, max_scale=1.0, hflip=0.5, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD):
        steps = [transforms.RandomResizedCrop(image_size, scale=(min_scale, max_scale),
                                              interpolation=InterpolationMode.BILINEAR)]
        if hflip:
            steps.append(transforms.RandomHorizontalFlip(float(hflip)))
        super().__init__(transforms.Compose(steps), mean=mean, std=std)
        self.image_size = int(image_size)

    @classmethod
    def from_config(cls, cfg=None):
        c = settings(cls, cfg)
        return cls(image_size=c.image_size, min_scale=c.min_scale, max_scale=c.max_scale, hflip=c.hflip,
                   mean=tuple(c.mean), std=tuple(c.std))


@registry.register_processor("classifier_image_eval")
class ClassifierImageEvalProcessor(_ImageProcessor):
    @dataclass
    class Config:
        image_size: int = key(224, "output side in pixels", ge=1, le=MAX_SIDE)
        crop_pct: float = key(0.875, "center crop fraction after resizing to image_size / crop_pct", gt=0, le=1)
        mean: list = key(list(IMAGENET_MEAN), "per-channel mean", check=rgb_triple)
        std: list = key(list(IMAGENET_STD), "per-channel std", check=rgb_triple)

    def __init__(self, image_size=224, crop_pct=0.875, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        resize = int(round(image_size / crop_pct))
        t = transforms.Compose([transforms.Resize(resize, interpolation=InterpolationMode.BILINEAR),
                                transforms.CenterCrop(image_size)])
        super().__init__(t, mean=mean, std=std)
        self.image_size = int(image_size)

    @classmethod
    def from_config(cls, cfg=None):
        c = settings(cls, cfg)
        return cls(image_size=c.image_size, crop_pct=c.crop_pct, mean=tuple(c.mean), std=tuple(c.std))
