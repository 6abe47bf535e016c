"""Weight files on disk: where each config key's file comes from, reading ``torch.save`` files safely, and
strict loading of a state dict into a module.

Every ``.pth``/``.bin`` goes through ``torch.load(weights_only=True)``; a file that cannot be read is a
one-line :class:`CheckpointError` naming the file.
"""
from __future__ import annotations

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


def require_file(path, key: str, section: str = "model") -> Path:
    if path is None or str(path).strip() == "":
        raise FileNotFoundError(f"{section}.{key} is not set; it must point at {WHERE_TO_GET.get(key, 'a file')}")
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise FileNotFoundError(f"{section}.{key}: {p} does not exist; download {WHERE_TO_GET.get(key, 'it')} "
                                f"and set {section}.{key} to its local path")
    return p


def load_torch(path: Path) -> dict:
    """A ``torch.save`` file read with ``weights_only=True``; a folder, an empty, truncated or foreign file, or
    a pickle that would run code is a :class:`CheckpointError` naming the file."""
    import pickle
    import zipfile

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if path.is_file() and path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        why = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0] \
            if "WeightsUnpickler error:" in text else (text.strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: not a plain tensor checkpoint (refused by weights_only loading: "
                              f"{why[:200]})") from None
    except (EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: truncated or not a PyTorch checkpoint ({type(exc).__name__})") from None
    except RuntimeError as exc:
        if "zip" in str(exc).lower() or "archive" in str(exc).lower():
            raise CheckpointError(f"{path}: truncated or not a PyTorch checkpoint "
                                  f"({str(exc).splitlines()[0].split('. ')[0]})") from None
        raise



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


