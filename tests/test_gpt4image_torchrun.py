"""GPT4Image training under ``torchrun --nproc-per-node 2`` (gloo, CPU): a run killed (SIGKILL to the whole
launch) after a mid-epoch checkpoint and resumed with ``--resume auto`` ends with weights AND BatchNorm
statistics bitwise equal to an uninterrupted 2-rank run, with the per-epoch validation in log.txt."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from tests.gpt4image_fixtures import make_folder, train_config, write_embeddings
from tests.train_helpers import REPO, free_port, run_train, subprocess_env

pytestmark = pytest.mark.slow

SMALL_CNN = {"channels": [8, 16, 16, 16], "stem_width": 8}


def _config(tmp_path, job):
    (tmp_path / job).mkdir()
    return train_config(tmp_path / job, tmp_path / "train", tmp_path / "e.safetensors", val=tmp_path / "val",
                        batch_size=2, max_epoch=2, extra_model={"backbone_kwargs": SMALL_CNN},
                        extra_run={"save_every": 2, "log_freq": 1})


def test_two_ranks_kill_and_resume_is_bitwise_equal(tmp_path):
    keys = make_folder(tmp_path / "train", per_class=4)  # 12 images / (2 ranks x 2) = 3 steps per epoch
    make_folder(tmp_path / "val", per_class=1, seed=1)
    write_embeddings(tmp_path / "e.safetensors", keys)

    full = run_train(["--cfg-path", str(_config(tmp_path, "full"))], cwd=tmp_path, nproc=2)
    assert full.returncode == 0, full.stderr[-3000:]
    log = [json.loads(x) for x in (tmp_path / "full" / "out" / "job" / "log.txt").read_text().splitlines()[1:]]
    assert [row["epoch"] for row in log] == [0, 1] and all(row["val_images"] == 3 for row in log)

    killed_cfg = _config(tmp_path, "killed")
    job = tmp_path / "killed" / "out" / "job"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           str(REPO / "train.py"), "--cfg-path", str(killed_cfg)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not (job / "resume.pt").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert (job / "resume.pt").exists() and proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # launcher and both ranks
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (job / "checkpoint_1.safetensors").exists()

    resumed = run_train(["--cfg-path", str(killed_cfg), "--resume", "auto"], cwd=tmp_path, nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    a = load_file(str(tmp_path / "full" / "out" / "job" / "checkpoint_1.safetensors"))
    b = load_file(str(job / "checkpoint_1.safetensors"))
    assert a.keys() == b.keys() and any(k.endswith("running_mean") for k in a)
    assert all(a[k].equal(b[k]) for k in a)
    assert (job / "classifier.safetensors").is_file()
