"""SIGTERM to ``torchrun --nproc-per-node 2`` while each rank reads through a DataLoader worker, as a cluster
scheduler stops a job: torchrun relays the signal to every rank's process group (rank and worker), the ranks
stop at the next optimizer step with a checkpoint, and ``--resume auto`` ends bitwise equal to a run that was
never stopped."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.train_helpers import (REPO, free_port, run_train, subprocess_env, train_config, write_align_folder,
                                 write_config)

pytestmark = pytest.mark.slow

TOTAL_STEPS = 8


def _config(tmp_path, data, job):
    cfg = train_config(data, tmp_path / "out" / job, job_id="job", max_epoch=2, iters_per_epoch=TOTAL_STEPS // 2,
                       save_every=2, batch_size_train=2, num_workers=1, tensorboard=False)
    # random crops: the resumed run must also restore every rank's RNG and data position
    cfg["datasets"]["cc_sbu_align"]["vis_processor"]["train"] = {"name": "blip2_image_train", "image_size": 224}
    return write_config(tmp_path / f"{job}.yaml", cfg)


def _torchrun(cfg, *extra):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
            str(free_port()), str(REPO / "train.py"), "--cfg-path", str(cfg), *extra]


def test_sigterm_to_torchrun_stops_with_a_checkpoint_and_resumes_bitwise(tmp_path):
    data = write_align_folder(tmp_path / "align", n=8)
    cfg = _config(tmp_path, data, "stopped")
    job = tmp_path / "out" / "stopped" / "job"
    log_path = tmp_path / "stopped.log"
    # the uninterrupted reference runs alongside (same data, same 2 ranks), to save a launch's wall time
    with open(tmp_path / "full.log", "w") as reference_log:
        reference = subprocess.Popen(_torchrun(_config(tmp_path, data, "full")), cwd=tmp_path, env=subprocess_env(),
                                     stdout=reference_log, stderr=subprocess.STDOUT)
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(_torchrun(cfg), cwd=tmp_path, env=subprocess_env(), stdout=log_file,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 240
            while not (job / "resume.pt").exists() and proc.poll() is None and time.time() < deadline:
                time.sleep(0.02)
            assert proc.poll() is None, "the run ended before it could be stopped"
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(120)
            reference.wait(240)
        finally:
            for p in (proc, reference):
                if p.poll() is None:
                    p.kill()
    assert reference.returncode == 0, (tmp_path / "full.log").read_text()[-3000:]
    out = log_path.read_text()
    # torchrun itself always exits 1 after relaying a signal (it re-raises its SignalException)
    assert proc.returncode == 1, out[-3000:]
    assert out.count("SIGTERM: stopping at the next optimizer step") == 2, out[-3000:]
    assert "stopped at global step" in out
    assert "killed by signal" not in out and "exited unexpectedly" not in out, out[-3000:]
    assert out.count("Traceback") == 1 and "SignalException" in out  # torchrun's own, no rank crashed
    state = torch.load(job / "resume.pt", weights_only=True)
    assert 2 < state["global_step"] < TOTAL_STEPS  # the stop checkpoint, after the periodic one at step 2
    assert (job / state["weights"]).is_file() and not list(job.glob(".*tmp"))

    resumed = run_train(["--cfg-path", str(cfg), "--resume", "auto"], cwd=tmp_path, nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"global step {state['global_step']})" in resumed.stderr
    a = load_file(str(tmp_path / "out" / "full" / "job" / "checkpoint_1.safetensors"))
    b = load_file(str(job / "checkpoint_1.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].equal(b[key]), key


def test_sigterm_to_a_plain_run_exits_143_after_its_checkpoint(tmp_path):
    """Without torchrun the stop is reported by train.py's own exit code, 128 + SIGTERM. The signal goes to the
    whole process group (training process and its DataLoader worker), as a scheduler sends it."""
    data = write_align_folder(tmp_path / "align", n=8)
    cfg = _config(tmp_path, data, "plain")
    job = tmp_path / "out" / "plain" / "job"
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), "--cfg-path", str(cfg)], cwd=tmp_path,
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        while not (job / "resume.pt").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be stopped"
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err
    state = torch.load(job / "resume.pt", weights_only=True)
    assert 2 < state["global_step"] < TOTAL_STEPS
