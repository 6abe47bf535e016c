"""Distributed setup from the launcher's environment (torchrun, or SLURM) and small collective helpers.

``run.distributed: True`` with no launcher environment runs as one ordinary process. The backend is NCCL
for CUDA devices and gloo for CPU unless ``run.dist_backend`` says otherwise.

Device policy: the device comes from ``run.device`` (default: CUDA when available, else CPU). A config that
asks for ``cuda`` on a machine without CUDA falls back to CPU with a warning (so the original configs can be
tried on a laptop); under a multi-process launch each rank takes ``cuda:<LOCAL_RANK>``.
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from minigpt4.common.fields import typed
from minigpt4.common.sections import RunConfig

log = logging.getLogger(__name__)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    distributed: bool = False
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launcher_env(environ=None) -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) from torchrun's or SLURM's variables; None for a plain launch."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    return None


def default_device() -> torch.device:
    """The device used when none is configured: CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(requested: str | None, local_rank: int = 0) -> torch.device:
    """``run.device`` -> torch.device; ``cuda`` without CUDA falls back to CPU with a warning."""
    if not requested:
        requested = default_device().type
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            log.warning("run.device=%r but CUDA is not available: running on CPU (fp32, AMP off)", requested)
            return torch.device("cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device


def init_distributed_mode(run_cfg) -> DistInfo:
    """Read the launcher environment, pick the device and (when world size > 1) join the process group."""
    run_cfg = typed(RunConfig, run_cfg, "run")
    env = launcher_env() if run_cfg.distributed else None
    if env is None:
        launched = launcher_env()
        if launched is not None and launched[1] > 1:
            from minigpt4.common.config import ConfigError

            raise ConfigError(f"run.distributed is False but the launcher started {launched[1]} processes; set "
                              "run.distributed: True (or launch one process)")
        return DistInfo(device=resolve_device(run_cfg.device))
    rank, world_size, local_rank = env
    device = resolve_device(run_cfg.device, local_rank)
    if world_size == 1:
        return DistInfo(device=device)
    backend = run_cfg.dist_backend or ("nccl" if device.type == "cuda" else "gloo")
    if "MASTER_ADDR" not in os.environ:  # SLURM without torchrun
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
    dist.init_process_group(backend=backend, init_method=run_cfg.dist_url,
                            world_size=world_size, rank=rank, timeout=datetime.timedelta(minutes=60))
    dist.barrier()
    log.info("distributed: rank %d/%d (local %d) on %s, backend %s", rank, world_size, local_rank, device, backend)
    return DistInfo(rank, world_size, local_rank, True, device, backend)


# --------------------------------------------------------------------------- helpers (safe without a group)
def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_object(obj) -> list:
    if not is_dist():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()
