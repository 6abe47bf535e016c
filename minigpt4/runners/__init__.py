"""Runners (``run.runner``, default ``runner_base``) and the LR schedules they use."""
from minigpt4.common import optim  # noqa: F401  (registers the LR schedules)
from minigpt4.runners.runner_base import RunnerBase, TrainingDiverged
from minigpt4.runners.state import TrainState

__all__ = ["RunnerBase", "TrainState", "TrainingDiverged"]
