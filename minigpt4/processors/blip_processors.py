"""The original's image and caption processors (CLIP mean/std, bicubic)."""
from __future__ import annotations

import re

from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from minigpt4.common.registry import registry
from minigpt4.images import to_rgb
from minigpt4.processors.base import BaseProcessor

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_PUNCT = re.compile(r'[.!"()*#:;~]')
_SPACES = re.compile(r"\s{2,}")


class _ImageProcessor(BaseProcessor):
    def __init__(self, transform, mean=CLIP_MEAN, std=CLIP_STD):
        self.transform = transforms.Compose(
            [transform, transforms.ToTensor(), transforms.Normalize(mean, std)])

    def __call__(self, image):
        if isinstance(image, Image.Image):
            image = to_rgb(image)  # 16-bit, float and transparent images as they look, not clipped
        return self.transform(image)


@registry.register_processor("blip2_image_train")
class Blip2ImageTrainProcessor(_ImageProcessor):
    """V1 training augmentation: RandomResizedCrop(scale=(min_scale, max_scale)), no flip.

    ``deterministic: true`` swaps in the eval resize (what later upstream versions did).
    """

    def __init__(self, image_size=224, mean=CLIP_MEAN, std=CLIP_STD, min_scale=0.5, max_scale=1.0,
                 deterministic=False):
        if deterministic:
            t = transforms.Resize((image_size, image_size), interpolation=InterpolationMode.BICUBIC)
        else:
            t = transforms.RandomResizedCrop(image_size, scale=(min_scale, max_scale),
                                             interpolation=InterpolationMode.BICUBIC)
        super().__init__(t, mean, std)

    @classmethod
    def from_config(cls, cfg=None):
        cfg = cfg or {}
        return cls(image_size=cfg.get("image_size", 224), mean=tuple(cfg.get("mean", CLIP_MEAN)),
                   std=tuple(cfg.get("std", CLIP_STD)), min_scale=cfg.get("min_scale", 0.5),
                   max_scale=cfg.get("max_scale", 1.0), deterministic=cfg.get("deterministic", False))


@registry.register_processor("blip2_image_eval")
class Blip2ImageEvalProcessor(_ImageProcessor):
    """Aspect-distorting bicubic squash to (image_size, image_size), as the original."""

    def __init__(self, image_size=224, mean=CLIP_MEAN, std=CLIP_STD):
        super().__init__(transforms.Resize((image_size, image_size), interpolation=InterpolationMode.BICUBIC),
                         mean, std)

    @classmethod
    def from_config(cls, cfg=None):
        cfg = cfg or {}
        return cls(image_size=cfg.get("image_size", 224), mean=tuple(cfg.get("mean", CLIP_MEAN)),
                   std=tuple(cfg.get("std", CLIP_STD)))


def normalize_caption(caption: str, max_words: int = 50) -> str:
    """Lower-case, the original's punctuation set to spaces, whitespace runs collapsed, first max_words."""
    caption = _SPACES.sub(" ", _PUNCT.sub(" ", caption.lower()))
    caption = caption.rstrip("\n").strip(" ")
    words = caption.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else caption


@registry.register_processor("blip_caption")
class BlipCaptionProcessor(BaseProcessor):
    def __init__(self, prompt: str = "", max_words: int = 50):
        self.prompt = prompt
        self.max_words = max_words

    def __call__(self, caption: str) -> str:
        return self.prompt + normalize_caption(caption, self.max_words)

    @classmethod
    def from_config(cls, cfg=None):
        cfg = cfg or {}
        return cls(prompt=cfg.get("prompt", ""), max_words=cfg.get("max_words", 50))
