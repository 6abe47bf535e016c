"""Launcher environment parsing and the device policy (no process group needed)."""
from __future__ import annotations

import logging

import torch
from omegaconf import OmegaConf

from minigpt4.common import dist as D


def test_launcher_env_torchrun_and_slurm():
    assert D.launcher_env({}) is None
    assert D.launcher_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (3, 4, 1)
    assert D.launcher_env({"SLURM_PROCID": "2", "SLURM_NTASKS": "8", "SLURM_LOCALID": "0"}) == (2, 8, 0)
    assert D.launcher_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) is None


def test_distributed_true_without_launcher_runs_as_one_process(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    info = D.init_distributed_mode(OmegaConf.create({"distributed": True, "device": "cpu"}))
    assert (info.rank, info.world_size, info.distributed, info.device.type) == (0, 1, False, "cpu")
    assert not D.is_dist() and D.get_world_size() == 1


def test_cuda_request_without_cuda_falls_back_to_cpu(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING):
        assert D.resolve_device("cuda") == torch.device("cpu")
    assert "run.device='cuda' but CUDA is not available" in caplog.text
    assert D.resolve_device(None) == torch.device("cpu")


def test_multi_process_launch_with_distributed_false_is_an_error(monkeypatch):
    import pytest

    from minigpt4.common.config import ConfigError

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="run.distributed is False"):
        D.init_distributed_mode(OmegaConf.create({"distributed": False, "device": "cpu"}))
