"""Weight files on disk: where each config key's file comes from, reading ``torch.save`` files safely, and
strict loading of a state dict into a module.

Every ``.pth``/``.bin`` goes through ``torch.load(weights_only=True)``; a file that cannot be read is a
one-line :class:`CheckpointError` naming the file.
"""
from __future__ import annotations

import errno
import json
import logging
import os
from collections import Counter
from pathlib import Path

import torch

from minigpt4.errors import UserError

log = logging.getLogger(__name__)

WHERE_TO_GET = {
    "vit_ckpt": "eva_vit_g.pth (LAVIS BLIP-2 release: .../LAVIS/models/BLIP2/eva_vit_g.pth)",
    "q_former_model": "blip2_pretrained_flant5xxl.pth (LAVIS BLIP-2 release) or a Hugging Face BLIP-2 folder "
                      "such as a local copy of Salesforce/blip2-flan-t5-xxl",
    "llama_model": "a Hugging Face causal-LM folder: Vicuna v0 7B/13B (merged, e.g. Vision-CAIR/vicuna-7b) "
                   "or Llama-2-7b-chat-hf",
    "ckpt": "a MiniGPT-4 projection: pretrained_minigpt4.pth (13B), prerained_minigpt4_7b.pth (7B), "
            "pretrained_minigpt4_llama2_7b.pth, or a checkpoint written by train.py",
}


class CheckpointError(UserError, ValueError):
    """A weight file that does not fit what it is loaded into; the message says why."""


class MissingWeightFile(CheckpointError, FileNotFoundError):
    """A config key that points at nothing (or is not set)."""


SAFETENSORS_MAX_HEADER = 100_000_000  # the largest header the safetensors library accepts
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80  # every pickle torch writes starts with the PROTO opcode


def label(path, what: str | None = None) -> str:
    """How messages name a file: ``model.vit_ckpt /path/eva_vit_g.pth`` (config key first, when known)."""
    return f"{what} {path}" if what else str(path)


def _human(n: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def require_file(path, key: str, section: str = "model") -> Path:
    if path is None or str(path).strip() == "":
        raise MissingWeightFile(f"{section}.{key} is not set; it must point at {WHERE_TO_GET.get(key, 'a file')}")
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise MissingWeightFile(f"{section}.{key}: {p} does not exist; download {WHERE_TO_GET.get(key, 'it')} "
                                f"and set {section}.{key} to its local path")
    return p


def require_folder(path, key: str, section: str = "model") -> Path:
    """``require_file`` for keys that name a Hugging Face model folder: a file there is refused."""
    p = require_file(path, key, section)
    if not p.is_dir():
        raise CheckpointError(f"{section}.{key} {p} is a file; it must be a Hugging Face model folder "
                              f"(config.json, weights, tokenizer files): {WHERE_TO_GET.get(key, 'a folder')}")
    return p


def _plain_file(path: Path, name: str, n: int) -> tuple[int, bytes]:
    """(size, first ``n`` bytes) of a readable, non-empty file."""
    if path.is_dir():
        raise CheckpointError(f"{name} is a folder, not a checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{name} is empty")
    try:
        with open(path, "rb") as f:
            return size, f.read(n)
    except OSError as exc:
        raise CheckpointError(f"{name} cannot be read ({exc.strerror or exc})") from None


def load_torch(path: Path, what: str | None = None, *, mmap: bool = False):
    """A ``torch.save`` file read with ``weights_only=True``; a folder, an empty, truncated or foreign file, or
    a pickle that would run code is a :class:`CheckpointError` naming the file (after ``what``, the config
    key). ``mmap=True`` maps tensor data instead of reading it (a cheap check of a large zip checkpoint)."""
    import pickle
    import zipfile

    path = Path(path)
    name = label(path, what)
    _, head = _plain_file(path, name, 4)
    is_zip = head == _ZIP_MAGIC
    if not is_zip and head[0] != _PICKLE_PROTO:
        raise CheckpointError(f"{name}: not a plain tensor checkpoint: neither a PyTorch zip archive nor a pickle "
                              "(another format, or random bytes)")
    try:
        if is_zip:
            zipfile.ZipFile(path).close()  # reads only the central directory: finds a cut-off archive
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and is_zip)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{name}: not a plain tensor checkpoint (refused by weights_only loading: "
                              f"{_refusal(str(exc))})") from None
    except (EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{name}: truncated or not a PyTorch checkpoint ({type(exc).__name__})") from None
    except RuntimeError as exc:
        text = str(exc)
        if any(s in text.lower() for s in ("zip", "archive", "unexpected eof", "inline_container")):
            raise CheckpointError(f"{name}: truncated or not a PyTorch checkpoint "
                                  f"({text.splitlines()[0].split('. ')[0][:200]})") from None
        if "magic number" in text.lower():
            raise CheckpointError(f"{name}: not a plain tensor checkpoint (a pickle without torch's header, "
                                  "not written by torch.save)") from None
        raise
    except OSError as exc:  # torch's zip reader on a damaged archive (EINVAL), or a read that failed
        hint = "; truncated or not a PyTorch checkpoint" if exc.errno == errno.EINVAL else ""
        raise CheckpointError(f"{name} cannot be read ({exc.strerror or exc}){hint}") from None


def _refusal(text: str) -> str:
    """The reason inside torch's weights_only refusal (e.g. "unsupported GLOBAL posix.system"), without its
    boilerplate paragraphs."""
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    boilerplate = ("Weights only load failed", "Check the documentation", "Please file an issue")
    parts = [p.strip() for p in text.split("\n\n") if p.strip() and not p.strip().startswith(boilerplate)]
    return parts[0].splitlines()[0][:200] if parts else "content other than tensors"


def check_safetensors(path: Path, what: str | None = None) -> dict[str, tuple[int, ...]]:
    """Read only the header of a safetensors file: ``{key: shape}``. An empty, truncated or foreign file, or a
    header that claims more than the format allows, is a :class:`CheckpointError` naming the file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    name = label(path, what)
    size, head = _plain_file(path, name, 8)
    if size < 8:
        raise CheckpointError(f"{name}: {size} bytes, too short for a safetensors file (truncated?)")
    claimed = int.from_bytes(head, "little")
    if claimed > SAFETENSORS_MAX_HEADER:
        raise CheckpointError(f"{name}: not a safetensors file: its header claims {_human(claimed)} (the format "
                              f"allows {SAFETENSORS_MAX_HEADER:,} bytes; random bytes or another format)")
    if claimed > size - 8:
        raise CheckpointError(f"{name}: truncated or not a safetensors file: its header claims "
                              f"{_human(claimed)} but the whole file is {_human(size)}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except SafetensorError as exc:
        text = str(exc)
        if not text.startswith("Error while deserializing header"):
            raise
        why = text.split(":", 1)[1].strip()
        if "not fully covered" in why:
            raise CheckpointError(f"{name}: truncated: the file is shorter than its header says ({why})") from None
        raise CheckpointError(f"{name}: not a valid safetensors file ({why[:200]})") from None


def load_safetensors(path: Path, what: str | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, after :func:`check_safetensors`."""
    from safetensors.torch import load_file

    check_safetensors(path, what)
    return load_file(str(path))


def read_state(path: Path, what: str | None = None, unwrap: tuple[str, ...] = ("model",)) -> dict:
    """A state dict from a safetensors or ``torch.save`` file (unwrapped from ``{"model": ...}``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_safetensors(path, what)
    return tensor_dict(load_torch(path, what), label(path, what), unwrap)


def tensor_dict(raw, name: str, unwrap: tuple[str, ...] = ("model",)) -> dict:
    """``raw`` as a ``{name: tensor}`` state dict (taken out of an ``unwrap`` wrapper key), else an error."""
    for key in unwrap:
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
            break
    if not isinstance(raw, dict):
        raise CheckpointError(f"{name}: expected a state dict, got {type(raw).__name__}")
    tensors = {k: v for k, v in raw.items() if torch.is_tensor(v)}
    if not tensors:
        raise CheckpointError(f"{name}: holds no tensors at its top level (keys {sorted(map(str, raw))[:5]}); "
                              "not a state dict")
    return raw


def read_json(file: Path, name: str) -> dict:
    """A JSON object from ``file``; a file that does not parse is an error naming it, line and column."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"{name}: {file.name} is not a text file (binary content)") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{name}: {file.name} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                              f"{exc.msg})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{name}: {file.name} must hold a JSON object, got {type(data).__name__}")
    return data


def check_finite(state: dict, name: str) -> None:
    """Refuse NaN/inf values in floating tensors (weights a diverged run wrote)."""
    for key, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                raise CheckpointError(f"{name}: {key} has {bad} NaN/inf value(s) of {value.numel()}; the run that "
                                      "wrote it diverged, use an earlier checkpoint")


def is_hf_folder(path) -> bool:
    return path is not None and Path(str(path)).is_dir() and (Path(str(path)) / "config.json").exists()


# --------------------------------------------------------------------------- loading into modules
def load_into(module: torch.nn.Module, state: dict, required_prefixes: tuple[str, ...], what: str,
              ignored: Counter | None = None) -> None:
    """Copy ``state`` into ``module``: every key must exist with the same shape, and every module key
    under ``required_prefixes`` must be provided. Ignored keys are logged with their counts."""
    own = module.state_dict()
    unexpected = [k for k in state if k not in own]
    if unexpected:
        raise CheckpointError(f"{what}: {len(unexpected)} keys do not exist in the model, e.g. {unexpected[:3]}")
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise CheckpointError(f"{what}: size mismatch for {key}: checkpoint {list(value.shape)} vs "
                                  f"model {list(own[key].shape)}")
    missing = [k for k in own if k.startswith(required_prefixes) and k not in state]
    if missing:
        raise CheckpointError(f"{what}: {len(missing)} weights missing from the file, e.g. {missing[:3]}")
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value.to(own[key].dtype))
    if ignored:
        log.info("%s: loaded %d tensors; ignored %d keys (%s)", what, len(state), sum(ignored.values()),
                 ", ".join(f"{n} {r}" for r, n in sorted(ignored.items())))
    else:
        log.info("%s: loaded %d tensors", what, len(state))


