"""Every weight file the library reads or writes, and the one place original key names are converted.

Read: ``eva_vit_g.pth`` (flat EVA-ViT state dict), ``blip2_pretrained_flant5xxl.pth`` (``{"model": ...}``),
a Hugging Face BLIP-2 folder, ``pretrained_minigpt4*.pth`` (``{"model": {"llama_proj.*"}}``) and this
library's own ``*.safetensors`` + ``*.json``. Every ``.pth`` goes through ``torch.load(weights_only=True)``.
Write: trainable weights only, as safetensors, with a JSON sidecar saying what they fit.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections import Counter
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from minigpt4.errors import MissingFile, UserError

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
        raise MissingFile(f"{section}.{key} is not set; it must point at {WHERE_TO_GET.get(key, 'a file')}")
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise MissingFile(f"{section}.{key}: {p} does not exist; download {WHERE_TO_GET.get(key, 'it')} "
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


# --------------------------------------------------------------------------- EVA-ViT (original layout)
# (original name, transformers name); "{i}" is the block index, a trailing "." makes it a prefix
_VIT_NAMES = [
    ("cls_token", "embeddings.class_embedding"),
    ("pos_embed", "embeddings.position_embedding"),
    ("patch_embed.proj.", "embeddings.patch_embedding."),
    ("blocks.{i}.norm1.", "encoder.layers.{i}.layer_norm1."),
    ("blocks.{i}.norm2.", "encoder.layers.{i}.layer_norm2."),
    ("blocks.{i}.attn.qkv.weight", "encoder.layers.{i}.self_attn.qkv.weight"),
    ("blocks.{i}.attn.proj.", "encoder.layers.{i}.self_attn.projection."),
    ("blocks.{i}.mlp.", "encoder.layers.{i}.mlp."),
]


def _rule(src: str, dst: str) -> tuple[re.Pattern, str]:
    pattern = "^" + re.escape(src).replace(re.escape("{i}"), r"(\d+)") + ("" if src.endswith(".") else "$")
    return re.compile(pattern), dst.replace("{i}", r"\1")


_TO_HF = [_rule(o, h) for o, h in _VIT_NAMES]
_TO_ORIGINAL = [_rule(h, o) for o, h in _VIT_NAMES]


def _rename(key: str, rules) -> str | None:
    for pattern, repl in rules:
        if pattern.search(key):
            return pattern.sub(repl, key)
    return None


def eva_vit_to_hf(state: dict, num_layers: int) -> tuple[dict, Counter]:
    """Original EVA-ViT keys -> ``Blip2VisionModel`` keys. Returns (converted, ignored-key counts by reason)."""
    out, ignored, biases = {}, Counter(), {}
    for key, value in state.items():
        m = re.match(r"^blocks\.(\d+)\.", key)
        if m and int(m.group(1)) >= num_layers:
            ignored[f"blocks beyond depth {num_layers}"] += 1
            continue
        bias = re.match(r"^blocks\.(\d+)\.attn\.(q|v)_bias$", key)
        if bias:
            biases.setdefault(int(bias.group(1)), {})[bias.group(2)] = value
            continue
        new = _rename(key, _TO_HF)
        if new is None:
            ignored[f"not part of the ViT ({key.split('.')[0]})"] += 1
        else:
            out[new] = value
    for i, qv in biases.items():
        if set(qv) != {"q", "v"}:
            raise CheckpointError(f"block {i} has only {sorted(qv)}_bias; both q_bias and v_bias are needed")
        out[f"encoder.layers.{i}.self_attn.qkv.bias"] = torch.cat([qv["q"], torch.zeros_like(qv["q"]), qv["v"]])
    return out, ignored


def resize_pos_embed(pos: torch.Tensor, num_positions: int) -> torch.Tensor:
    """Bicubic resize of a [1, 1+g*g, W] position table to ``num_positions`` (CLS kept), as the original."""
    if pos.shape[1] == num_positions:
        return pos
    old, new = int(round((pos.shape[1] - 1) ** 0.5)), int(round((num_positions - 1) ** 0.5))
    cls, grid = pos[:, :1], pos[:, 1:].float()
    grid = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new * new, -1).to(pos.dtype)
    log.info("resized ViT position embeddings %dx%d -> %dx%d", old, old, new, new)
    return torch.cat([cls, grid], dim=1)


# --------------------------------------------------------------------------- BLIP-2 (original .pth)
_QFORMER_IGNORED = [
    (r"^Qformer\.cls\.", "Q-Former text head (cls)"),
    (r"^Qformer\.bert\.embeddings\.(word_embeddings|position_embeddings)\.", "Q-Former text embeddings"),
    (r"^Qformer\.bert\.embeddings\.position_ids$", "Q-Former position_ids buffer"),
    (r"^Qformer\.bert\.encoder\.layer\.\d+\.(intermediate|output)\.", "Q-Former text FFN"),
]


def blip2_to_hf(state: dict, num_vit_layers: int) -> tuple[dict, Counter]:
    """LAVIS BLIP-2 keys -> this library's ``VisionTower`` keys (``vision_model.``/``qformer.``/``query_tokens``)."""
    out, ignored = {}, Counter()
    vit = {k[len("visual_encoder."):]: v for k, v in state.items() if k.startswith("visual_encoder.")}
    if vit:
        converted, vit_ignored = eva_vit_to_hf(vit, num_vit_layers)
        out.update({f"vision_model.{k}": v for k, v in converted.items()})
        ignored.update({f"visual_encoder: {r}": n for r, n in vit_ignored.items()})
    for key, value in state.items():
        if key.startswith("visual_encoder."):
            continue
        if key == "query_tokens":
            out[key] = value
        elif key.startswith("ln_vision."):
            out["vision_model.post_layernorm." + key[len("ln_vision."):]] = value
        elif key.startswith("Qformer.bert.embeddings.LayerNorm."):
            out["qformer.layernorm." + key.rsplit(".", 1)[1]] = value
        elif any(re.search(p, key) for p, _ in _QFORMER_IGNORED):
            ignored[next(r for p, r in _QFORMER_IGNORED if re.search(p, key))] += 1
        elif key.startswith("Qformer.bert.encoder."):
            new = "qformer." + key[len("Qformer.bert."):]
            out[new.replace(".attention.self.", ".attention.attention.")
                   .replace(".crossattention.self.", ".crossattention.attention.")] = value
        else:
            ignored[f"unrelated to MiniGPT-4 ({key.split('.')[0]})"] += 1
    return out, ignored


# --------------------------------------------------------------------------- BLIP-2 (Hugging Face folder)
def read_hf_blip2_folder(folder: Path) -> dict:
    """Read only ``vision_model.*``, ``qformer.*`` and ``query_tokens`` from a HF BLIP-2 folder."""
    wanted = ("vision_model.", "qformer.", "query_tokens")
    files = sorted(folder.glob("*.safetensors"))
    state = {}
    if files:
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    if key.startswith(wanted):
                        state[key] = f.get_tensor(key)
    else:
        bins = sorted(folder.glob("pytorch_model*.bin"))
        if not bins:
            raise CheckpointError(f"{folder} has neither *.safetensors nor pytorch_model*.bin weights")
        for file in bins:
            state.update({k: v for k, v in load_torch(file).items() if k.startswith(wanted)})
    # older exports keep q_bias/v_bias separately
    for key in [k for k in state if k.endswith("self_attn.q_bias")]:
        prefix = key[: -len("q_bias")]
        q, v = state.pop(key), state.pop(prefix + "v_bias")
        state[prefix + "qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])
    state.pop("qformer.embeddings.position_ids", None)
    return state


def is_hf_folder(path) -> bool:
    return path is not None and Path(str(path)).is_dir() and (Path(str(path)) / "config.json").exists()


# --------------------------------------------------------------------------- writing the original layouts
def hf_to_eva_vit(vision_state: dict) -> dict:
    """``Blip2VisionModel`` state (no prefix) -> the original ``eva_vit_g.pth`` layout (``post_layernorm`` is
    ``ln_vision`` and lives in the BLIP-2 file instead)."""
    out = {}
    for key, value in vision_state.items():
        bias = re.match(r"^encoder\.layers\.(\d+)\.self_attn\.qkv\.bias$", key)
        if bias:
            q, _, v = value.chunk(3)
            out[f"blocks.{bias.group(1)}.attn.q_bias"] = q.clone()
            out[f"blocks.{bias.group(1)}.attn.v_bias"] = v.clone()
            continue
        if key.startswith("post_layernorm."):
            continue
        new = _rename(key, _TO_ORIGINAL)
        if new is None:
            raise CheckpointError(f"no original name for vision key {key}")
        out[new] = value
    return out


def tower_to_blip2(tower_state: dict) -> dict:
    """``VisionTower`` state -> the ``"model"`` dict of an original BLIP-2 checkpoint (query tokens,
    ``ln_vision``, ``Qformer.bert.*``); the ViT itself goes to :func:`hf_to_eva_vit`."""
    out = {}
    for key, value in tower_state.items():
        if key == "query_tokens":
            out[key] = value
        elif key.startswith("vision_model.post_layernorm."):
            out["ln_vision." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("qformer.layernorm."):
            out["Qformer.bert.embeddings.LayerNorm." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("qformer.encoder."):
            new = "Qformer.bert." + key[len("qformer."):]
            out[new.replace(".attention.attention.", ".attention.self.")
                   .replace(".crossattention.attention.", ".crossattention.self.")] = value
    return out


def export_original(tower, eva_path, blip2_path, vit_dtype=torch.float16) -> None:
    """Save a ``VisionTower`` as ``eva_vit_g.pth`` (flat, ``vit_dtype``) + BLIP-2 ``{"model": ...}`` (fp32)."""
    vision = {k: v.detach().cpu() for k, v in tower.vision_model.state_dict().items()}
    torch.save({k: v.to(vit_dtype) for k, v in hf_to_eva_vit(vision).items()}, eva_path)
    state = {k: v.detach().cpu().float() for k, v in tower.state_dict().items()}
    torch.save({"model": tower_to_blip2(state)}, blip2_path)


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


# --------------------------------------------------------------------------- trainable weights (projection)
def read_trainable(path: Path) -> tuple[dict, dict]:
    """Read a projection checkpoint: ours (safetensors [+ JSON sidecar]) or the original ``.pth``.
    Returns (state, metadata). Original files may wrap the state in ``"model"`` and carry buffers."""
    if path.suffix == ".safetensors":
        state = load_file(str(path))
        sidecar = path.with_suffix(".json")
        meta = json.loads(sidecar.read_text()) if sidecar.exists() else {}
        return state, meta
    raw = load_torch(path)
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict):
        raw = raw["model"]
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(raw).__name__}")
    return raw, {}


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
