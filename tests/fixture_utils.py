"""The golden fixtures' helpers (shared with the benchmarks)."""
from minigpt4.testing.golden import FIXTURES, expected, fixture_config, fixture_dirs, inputs, model_cfg  # noqa: F401
