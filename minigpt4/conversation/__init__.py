from minigpt4.conversation.conversation import (
    CONV_DICT,
    CONV_VISION,
    CONV_VISION_LLama2,
    CONV_VISION_Vicuna0,
    Chat,
    Conversation,
    SeparatorStyle,
    load_image,
    training_conversation,
)
from minigpt4.conversation.history import ContextTooLongError
from minigpt4.conversation.settings import GenerationSettingsError, check_generation_settings

__all__ = ["Chat", "Conversation", "SeparatorStyle", "CONV_VISION", "CONV_VISION_Vicuna0", "CONV_VISION_LLama2",
           "CONV_DICT", "training_conversation", "ContextTooLongError", "load_image", "GenerationSettingsError",
           "check_generation_settings"]
