"""Processor base: a callable built from a config block (``name`` plus its own settings, declared by the
processor class's ``Config`` dataclass: type, default, range and help of each key)."""
from __future__ import annotations

from omegaconf import OmegaConf

from minigpt4.common.fields import typed
from minigpt4.errors import ConfigError


def rgb_triple(value) -> str | None:
    if len(value) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return f"expected 3 numbers (one per RGB channel), got {value!r}"
    return None


def settings(cls, cfg):
    """``cfg`` without ``name``, typed by ``cls.Config`` (every default filled in, every key checked)."""
    cfg = OmegaConf.create(cfg or {}) if not OmegaConf.is_config(cfg) else cfg
    own = {k: cfg[k] for k in cfg.keys() if k != "name"}
    return typed(cls.Config, OmegaConf.create(own), f"processor {cfg.get('name', cls.__name__)!r}")


POSITIVE_KEYS = ("image_size", "max_words", "crop_pct", "min_scale", "max_scale")


class BaseProcessor:
    def __call__(self, item):
        raise NotImplementedError

    @classmethod
    def from_config(cls, cfg=None):
        return cls()


def build_processor(cfg):
    """Build a registered processor from ``{"name": ..., **settings}`` (None -> None)."""
    from minigpt4.common.registry import registry

    if cfg is None:
        return None
    cfg = OmegaConf.create(cfg) if not OmegaConf.is_config(cfg) else cfg
    for key in POSITIVE_KEYS:
        value = cfg.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise ConfigError(f"processor {cfg.get('name')!r}: {key} must be a number > 0, got {value!r}")
    return registry.get_processor_class(cfg.name).from_config(cfg)
