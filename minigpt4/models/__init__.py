from minigpt4.models.minigpt4 import MiniGPT4, build_vision_tower
from minigpt4.models.vision import VisionTower

__all__ = ["MiniGPT4", "VisionTower", "build_vision_tower", "load_model"]


def load_model(cfg, device=None):
    """Build the model named by ``cfg.arch`` (a model config section) through the registry."""
    from minigpt4.common.registry import registry

    return registry.get_model_class(cfg.arch).from_config(cfg, device=device)
