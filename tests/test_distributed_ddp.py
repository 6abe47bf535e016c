"""Real DDP: ``torchrun --nproc-per-node 2 train.py`` on CPU (gloo) against a 1-process run with the same
global batch. The loss of each rank is weighted by its share of the global answer tokens, so the two runs
must agree although the captions (and so the token counts per rank) differ."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from minigpt4.runners.checkpointing import weights_digest
from minigpt4.testing.golden import fixture_dirs
from tests.train_helpers import run_train, train_config, train_in_process, write_align_folder, write_config

pytestmark = pytest.mark.slow


def test_two_ranks_match_one_process(tmp_path):
    data = write_align_folder(tmp_path / "align", n=8)
    common = dict(max_epoch=1, iters_per_epoch=2, warmup_steps=1, init_lr=5e-2, min_lr=1e-2, max_grad_norm=None)
    one = write_config(tmp_path / "one.yaml", train_config(data, tmp_path / "out", job_id="one", batch_size_train=4,
                                                             **common))
    two = write_config(tmp_path / "two.yaml", train_config(data, tmp_path / "out", job_id="two", batch_size_train=2,
                                                             **common))
    assert train_in_process(["--cfg-path", str(one)]) == 0  # the 1-process reference runs in this process
    r2 = run_train(["--cfg-path", str(two)], cwd=tmp_path, nproc=2)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "rank 0/2" in r2.stderr and "backend gloo" in r2.stderr
    # the main process logs progress lines (log_freq: 1); the other rank stays quiet
    progress = [line for line in r2.stderr.splitlines() if "samples/s" in line]
    assert len(progress) == 2 and all("data_wait" in p and "eta" in p and "peak_mem" in p for p in progress)

    w1 = load_file(str(tmp_path / "out" / "one" / "checkpoint_0.safetensors"))
    w2 = load_file(str(tmp_path / "out" / "two" / "checkpoint_0.safetensors"))
    resume = torch.load(tmp_path / "out" / "two" / "resume.pt", weights_only=True)
    # both ranks held bitwise identical weights, equal to what rank 0 saved
    assert len(resume["weights_digests"]) == 2 and len(set(resume["weights_digests"])) == 1
    assert resume["weights_digests"][0] == weights_digest(w2)
    # each rank kept its own data position
    assert len(resume["data"]) == 2 and resume["data"][0] != resume["data"][1]
    for key in ("llama_proj.weight", "llama_proj.bias"):
        torch.testing.assert_close(w2[key], w1[key], rtol=1e-4, atol=1e-6)
    init = torch.load(fixture_dirs()[0] / "minigpt4_proj.pth", weights_only=True)["model"]
    assert (w1["llama_proj.weight"] - init["llama_proj.weight"]).abs().max() > 1e-3  # training moved the weights
