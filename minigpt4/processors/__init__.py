from minigpt4.processors.base import BaseProcessor, build_processor
from minigpt4.processors.blip_processors import (
    Blip2ImageEvalProcessor,
    Blip2ImageTrainProcessor,
    BlipCaptionProcessor,
    normalize_caption,
)

__all__ = ["BaseProcessor", "build_processor", "Blip2ImageTrainProcessor", "Blip2ImageEvalProcessor",
           "BlipCaptionProcessor", "normalize_caption"]
