"""Resume-file pieces: RNG capture/restore, atomic writes, finding the latest run."""
from __future__ import annotations

import io
import os
import random
import time

import numpy as np
import pytest
import torch

from minigpt4.runners import checkpointing as C


def _draw():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_rng_roundtrip_survives_weights_only_load():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    _draw()
    buf = io.BytesIO()
    torch.save(C.capture_rng(), buf)
    expected = _draw()
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    C.restore_rng(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert _draw() == expected


def test_atomic_save_leaves_no_temp_files(tmp_path):
    C.atomic_torch_save({"a": torch.ones(2)}, tmp_path / "resume.pt")
    C.atomic_torch_save({"a": torch.zeros(2)}, tmp_path / "resume.pt")
    assert os.listdir(tmp_path) == ["resume.pt"]
    assert torch.load(tmp_path / "resume.pt", weights_only=True)["a"].sum() == 0


def test_find_latest_and_find_resume(tmp_path):
    assert C.find_latest(tmp_path / "missing") is None
    for job in ("old", "new"):
        (tmp_path / job).mkdir()
        (tmp_path / job / "resume.pt").write_bytes(b"x")
        time.sleep(0.01)
    os.utime(tmp_path / "old" / "resume.pt", (1, 1))
    assert C.find_latest(tmp_path) == tmp_path / "new" / "resume.pt"
    assert C.find_resume(tmp_path / "old") == tmp_path / "old" / "resume.pt"
    assert C.find_resume(tmp_path) == tmp_path / "new" / "resume.pt"
    with pytest.raises(FileNotFoundError, match="run.resume_ckpt_path"):
        C.find_resume(tmp_path / "nope")


def test_weights_digest_is_bitwise():
    a = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor(0.5)}
    b = {"w": torch.nextafter(a["w"], torch.tensor(3.0)), "b": torch.tensor(0.5)}  # one ulp apart
    assert C.weights_digest(a) == C.weights_digest({k: v.clone() for k, v in a.items()})
    assert C.weights_digest(a) != C.weights_digest(b)
