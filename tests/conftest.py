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


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """Entry points called in-process set up logging on the test's captured stderr; put the root logger back
    afterwards, so a later test does not log into a stream pytest has closed."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
    for h in handlers:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(level)
