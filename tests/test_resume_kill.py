"""SIGKILL a CPU run after a mid-epoch checkpoint (``save_every``), resume it with ``--resume auto``, and
compare with an uninterrupted run: the trainable weights must be bitwise equal. Stage-2 style (a random
instruction per batch) with the random-crop image processor, so Python, torch and data-loader state all
have to be restored."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from tests.train_helpers import (REPO, model_block, run_train, subprocess_env, train_config, train_in_process,
                                 write_align_folder, write_config)

pytestmark = pytest.mark.slow

STAGE2 = dict(prompt_path="prompts/alignment.txt", prompt_template="###Human: {} ###Assistant: ", end_sym="###",
              max_txt_len=160)


def _config(tmp_path, data, job):
    cfg = train_config(data, tmp_path / "out" / job, job_id="job", max_epoch=2, iters_per_epoch=3,
                       save_every=2, batch_size_train=2, num_workers=1, tensorboard=False)
    cfg["model"] = model_block(**STAGE2)
    cfg["datasets"]["cc_sbu_align"]["vis_processor"]["train"] = {"name": "blip2_image_train", "image_size": 224}
    return write_config(tmp_path / f"{job}.yaml", cfg)


def test_sigkill_then_resume_is_bitwise_equal(tmp_path):
    data = write_align_folder(tmp_path / "align", n=6)
    # the uninterrupted reference runs in this process (one thread, as the subprocesses)
    assert train_in_process(["--cfg-path", str(_config(tmp_path, data, "full"))]) == 0

    killed_cfg = _config(tmp_path, data, "killed")
    resume_file = tmp_path / "out" / "killed" / "job" / "resume.pt"
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), "--cfg-path", str(killed_cfg)], cwd=tmp_path,
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not resume_file.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert resume_file.exists() and proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "out" / "killed" / "job" / "checkpoint_1.safetensors").exists()

    resumed = run_train(["--cfg-path", str(killed_cfg), "--resume", "auto"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    a = load_file(str(tmp_path / "out" / "full" / "job" / "checkpoint_1.safetensors"))
    b = load_file(str(tmp_path / "out" / "killed" / "job" / "checkpoint_1.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].equal(b[key]), key
