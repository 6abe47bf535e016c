"""Importing this module registers the GPT4Image training pieces: model ``gpt4image_classifier``, dataset
builder ``gpt4image_folder``, processors ``classifier_image_train/eval``, task ``image_classification`` and
runner ``runner_classifier``."""
from minigpt4.gpt4image import builder, model, processors, runner, task  # noqa: F401
