"""The golden micro model's inference config and test pictures (shared with the benchmarks)."""
from minigpt4.testing.golden import COLORS, FX, draw_scene, write_config  # noqa: F401
