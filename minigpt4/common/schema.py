"""Known config keys and their accepted types, per section, as ``{key: tuple of types}`` tables.

Derived from the typed sections in :mod:`minigpt4.common.sections` (the one owner of every key's type,
default, range and help); kept for code that extends a table, e.g. a builder's ``CONFIG_KEYS``.
"""
from __future__ import annotations

from minigpt4.common.fields import table_of
from minigpt4.common.sections import DatasetConfig, ModelConfig, RunConfig

NUM = (int, float)
OPT_STR = (str, type(None))
OPT_NUM = (int, float, type(None))
OPT_INT = (int, type(None))

TOP_LEVEL = ("model", "preprocess", "datasets", "run")

MODEL_KEYS: dict[str, tuple] = table_of(ModelConfig)
DATASET_KEYS: dict[str, tuple] = table_of(DatasetConfig)
RUN_KEYS: dict[str, tuple] = table_of(RunConfig)
