"""The original's image and caption processors (CLIP mean/std, bicubic)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from minigpt4.common.registry import registry
from minigpt4.images import to_rgb
from minigpt4.common.fields import key
from minigpt4.processors.base import BaseProcessor, rgb_triple, settings

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

    @dataclass
    class Config:
        image_size: int = key(224, "output side in pixels", ge=1)
        mean: list = key(list(CLIP_MEAN), "per-channel mean", check=rgb_triple)
        std: list = key(list(CLIP_STD), "per-channel std", check=rgb_triple)
        min_scale: float = key(0.5, "smallest crop area fraction", gt=0, le=1)
        max_scale: float = key(1.0, "largest crop area fraction", gt=0, le=1)
        deterministic: bool = key(False, "plain resize instead of random crops")

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
        c = settings(cls, cfg)
        return cls(image_size=c.image_size, mean=tuple(c.mean), std=tuple(c.std), min_scale=c.min_scale,
                   max_scale=c.max_scale, deterministic=c.deterministic)


@registry.register_processor("blip2_image_eval")
class Blip2ImageEvalProcessor(_ImageProcessor):
    """Aspect-distorting bicubic squash to (image_size, image_size), as the original."""

    @dataclass
    class Config:
        image_size: int = key(224, "output side in pixels", ge=1)
        mean: list = key(list(CLIP_MEAN), "per-channel mean", check=rgb_triple)
        std: list = key(list(CLIP_STD), "per-channel std", check=rgb_triple)

    def __init__(self, image_size=224, mean=CLIP_MEAN, std=CLIP_STD):
        super().__init__(transforms.Resize((image_size, image_size), interpolation=InterpolationMode.BICUBIC),
                         mean, std)

    @classmethod
    def from_config(cls, cfg=None):
        c = settings(cls, cfg)
        return cls(image_size=c.image_size, mean=tuple(c.mean), std=tuple(c.std))


def normalize_caption(caption: str, max_words: int = 50) -> str:
    """Lower-case, the original's punctuation set to spaces, whitespace runs collapsed, first max_words."""
    caption = _SPACES.sub(" ", _PUNCT.sub(" ", caption.lower()))
    caption = caption.rstrip("\n").strip(" ")
    words = caption.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else caption


@registry.register_processor("blip_caption")
class BlipCaptionProcessor(BaseProcessor):
    @dataclass
    class Config:
        prompt: str = key("", "text put before every caption")
        max_words: int = key(50, "captions are cut after this many words", ge=1)

    def __init__(self, prompt: str = "", max_words: int = 50):
        self.prompt = prompt
        self.max_words = max_words

    def __call__(self, caption: str) -> str:
        return self.prompt + normalize_caption(caption, self.max_words)

    @classmethod
    def from_config(cls, cfg=None):
        c = settings(cls, cfg)
        return cls(prompt=c.prompt, max_words=c.max_words)
