"""Checkpoints of a run: trainable weights (safetensors + JSON, via ``models.checkpoint.save_trainable``)
and one resume file (``resume.pt``) with everything else needed to continue bit for bit: optimizer, AMP
scaler, step position, the RNG states of every rank and every rank's data position.

Every file is written to a temporary name and moved into place with ``os.replace``, so a kill at any moment
leaves either the previous complete checkpoint or the new complete one. The resume file is written last and
names the weights file it belongs to, so it is the commit point. A write that fails (disk full, permission
lost) removes its temporary file and leaves the previous files as they were; :func:`writing` turns the
``OSError`` into a one-line :class:`CheckpointWriteError` naming the file.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

from minigpt4.errors import MissingFile, UserError
from minigpt4.models.checkpoint import CheckpointError, write_atomically

log = logging.getLogger(__name__)

RESUME_FILE = "resume.pt"
FORMAT_VERSION = 1


class CheckpointWriteError(UserError, RuntimeError):
    """A checkpoint file could not be written; the message names it and says why."""


@contextlib.contextmanager
def writing(path: str | Path):
    """Turn an ``OSError`` raised while writing ``path`` into a one-line :class:`CheckpointWriteError`."""
    try:
        yield
    except OSError as e:
        code = f", {errno.errorcode[e.errno]}" if e.errno in errno.errorcode else ""
        raise CheckpointWriteError(f"cannot write {path}: {e.strerror or e}{code}") from e


def atomic_torch_save(obj, path: str | Path) -> Path:
    path = Path(path)
    buffer = io.BytesIO()  # serialised first: a failing write is then a plain OSError, not a zip-writer error
    torch.save(obj, buffer)
    write_atomically(path, buffer.getbuffer(), tmp=path.with_name(f".{path.name}.{os.getpid()}.tmp"))
    return path


def capture_rng() -> dict:
    """Every RNG a step can touch, as plain Python/tensor values (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def weights_digest(state: dict) -> str:
    """SHA-256 over the tensors' bytes (sorted by name): equal digests mean bitwise-equal weights."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().to("cpu").contiguous()
        h.update(key.encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def weights_name(epoch: int, step_in_epoch: int, iters_per_epoch: int) -> str:
    """``checkpoint_{epoch}`` after a whole epoch (the original's naming), else ``checkpoint_step{global}``."""
    if step_in_epoch == iters_per_epoch:
        return f"checkpoint_{epoch}.safetensors"
    return f"checkpoint_step{epoch * iters_per_epoch + step_in_epoch}.safetensors"


def find_resume(path: str | Path) -> Path:
    """A resume file given as the file itself, or as a folder holding one (the newest job folder inside an
    output folder counts too)."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.exists():
        raise MissingFile(f"run.resume_ckpt_path: {p} does not exist")
    if (p / RESUME_FILE).is_file():
        return p / RESUME_FILE
    found = sorted(p.glob(f"*/{RESUME_FILE}"), key=lambda f: f.stat().st_mtime)
    if not found:
        raise MissingFile(f"run.resume_ckpt_path: no {RESUME_FILE} in {p} or its job folders")
    return found[-1]


def check_weights(state: dict) -> None:
    """The weights file a resume file names must be complete and hold the weights the resume file was saved
    with (the SHA-256 digest it records); a one-line :class:`CheckpointError` naming both files otherwise."""
    from safetensors.torch import load_file

    path, weights = state["path"], state["weights_path"]
    try:
        tensors = load_file(str(weights))
    except Exception as e:  # noqa: BLE001  (safetensors reports a truncated or corrupt file in several ways)
        raise CheckpointError(f"{path} refers to {weights}, which is unreadable ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); the file is truncated or corrupt"
                              ) from None
    digests = state.get("weights_digests") or []
    if digests and weights_digest(tensors) != digests[0]:
        raise CheckpointError(f"{path} refers to {weights}, whose weights are not the ones saved with it "
                              "(SHA-256 differs); the file was changed or replaced")


def find_latest(output_dir: str | Path) -> Path | None:
    """``--resume auto``: the most recently written resume file under ``output_dir`` (None if there is none)."""
    root = Path(output_dir)
    found = sorted(root.glob(f"*/{RESUME_FILE}"), key=lambda f: f.stat().st_mtime) if root.is_dir() else []
    return found[-1] if found else None


def load_resume(path: str | Path, world_size: int | None = None) -> dict:
    """The resume file at ``path`` (or in that folder), checked once: ours, its weights file complete and
    unchanged, and (given ``world_size``) written by as many processes as this run has."""
    path = find_resume(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not ours, or a foreign pickle: never unpickle arbitrary objects
        raise CheckpointError(f"{path} is not a resume file written by this library ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a resume file written by this library (format {FORMAT_VERSION})")
    weights = path.parent / state["weights"]
    if not weights.is_file():
        raise MissingFile(f"{path} refers to {weights.name}, which is missing from {path.parent}")
    state["path"] = path
    state["weights_path"] = weights
    check_weights(state)
    if world_size is not None and state["world_size"] != world_size:
        from minigpt4.common.config import ConfigError

        raise ConfigError(f"run.resume_ckpt_path: {path} was written by {state['world_size']} process(es); "
                          f"resume with the same number (now {world_size})")
    return state
