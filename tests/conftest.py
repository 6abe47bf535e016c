"""Fixtures shared by several test files."""
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
