"""Fixtures shared by several test files.

Helpers shared with the benchmarks (the golden micro model, pictures, curation work folders, a local
OpenAI-compatible server) are in :mod:`minigpt4.testing`; the tests' own helper modules (``train_helpers``,
``shard_utils``, ``serve_utils``, ...) are imported as ``from tests.<module> import ...`` (pytest's
``pythonpath`` puts the repository root on the path), so each is loaded once under one name."""
from __future__ import annotations

import pytest


@pytest.fixture
def no_work(monkeypatch):
    """Fail loudly if train.py gets as far as building datasets or the model."""
    from minigpt4.tasks.base_task import BaseTask

    def boom(*a, **k):
        raise AssertionError("work started before the bad input was reported")

    monkeypatch.setattr(BaseTask, "build_model", boom)
    monkeypatch.setattr(BaseTask, "build_datasets", boom)
