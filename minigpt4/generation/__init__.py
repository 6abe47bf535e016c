"""Batched generation with rows that join and leave a running batch (continuous batching)."""
from minigpt4.generation.engine import Engine, Failed, Finished, Piece, QueueFull, Request, Scheduler, generate_all
from minigpt4.generation.sampling import SamplingParams

__all__ = ["Engine", "Scheduler", "Request", "SamplingParams", "Piece", "Finished", "Failed", "QueueFull",
           "generate_all"]
