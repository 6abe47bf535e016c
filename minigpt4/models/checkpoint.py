"""This library's own checkpoints of the trainable weights, and the one import point for weight files.

Read: ``pretrained_minigpt4*.pth`` (``{"model": {"llama_proj.*"}}``) and this library's own
``*.safetensors`` + ``*.json``. Write: trainable weights only, as safetensors, with a JSON sidecar saying
what they fit. Reading other files lives in :mod:`minigpt4.models.weight_files`, key conversion of the
original layouts in :mod:`minigpt4.models.convert`; their names are re-exported here.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from safetensors.torch import save as safetensors_bytes

from minigpt4.models.convert import (  # noqa: F401  (re-exported)
    blip2_to_hf, eva_vit_to_hf, export_original, hf_to_eva_vit, read_hf_blip2_folder, resize_pos_embed,
    tower_to_blip2,
)
from minigpt4.models.weight_files import (  # noqa: F401  (re-exported)
    WHERE_TO_GET, CheckpointError, check_finite, is_hf_folder, label, load_into, load_safetensors, load_torch,
    read_json, require_file, tensor_dict,
)

__all__ = ["WHERE_TO_GET", "CheckpointError", "blip2_to_hf", "eva_vit_to_hf", "export_original", "hf_to_eva_vit",
           "is_hf_folder", "load_into", "load_torch", "read_hf_blip2_folder", "read_trainable", "require_file",
           "resize_pos_embed", "save_trainable", "tower_to_blip2", "write_atomically"]


def read_trainable(path: Path, what: str | None = None) -> tuple[dict, dict]:
    """Read a projection checkpoint: ours (safetensors [+ JSON sidecar]) or the original ``.pth``.
    Returns (state, metadata). Original files may wrap the state in ``"model"`` and carry buffers.
    An unreadable file or sidecar, or NaN/inf weights, is a :class:`CheckpointError` naming ``what`` and the file."""
    path = Path(path)
    name = label(path, what)
    if path.suffix == ".safetensors":
        state = load_safetensors(path, what)
        sidecar = path.with_suffix(".json")
        meta = read_json(sidecar, name) if sidecar.is_file() else {}
    else:
        state, meta = tensor_dict(load_torch(path, what), name), {}
    check_finite(state, name)
    return state, meta


def save_trainable(path: str | Path, state: dict, meta: dict) -> Path:
    """Write ``state`` as safetensors plus ``<name>.json`` (``meta``), each through a temp file + rename."""
    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    write_atomically(path, safetensors_bytes(tensors, metadata={"format": "pt"}))
    write_atomically(path.with_suffix(".json"), json.dumps(meta, indent=2, sort_keys=True).encode())
    return path


def write_atomically(path: Path, data, tmp: Path | None = None) -> None:
    """Write ``data`` to a temp name next to ``path``, fsync, move it onto ``path``. A failure (a full disk,
    a lost permission, an interrupt) deletes the temp file and re-raises, so ``path`` is always either the
    old or the new complete file. Bytes are serialised before, so an I/O failure is a plain ``OSError``."""
    tmp = tmp or path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
