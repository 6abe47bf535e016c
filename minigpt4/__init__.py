"""MiniGPT-4 as a training library. Importing the package registers every model, dataset builder,
processor, task, runner and LR schedule, so configs can name them."""
from minigpt4 import datasets, models, processors, runners, tasks  # noqa: F401  (registration)
from minigpt4.gpt4image import register as _gpt4image  # noqa: F401,E402  (classifier, builder, task, runner)
from minigpt4.common.registry import registry

__all__ = ["registry"]
