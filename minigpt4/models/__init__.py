from minigpt4.models.minigpt4 import MiniGPT4, build_vision_tower
from minigpt4.models.vision import VisionTower

__all__ = ["MiniGPT4", "VisionTower", "build_vision_tower"]
