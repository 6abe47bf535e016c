"""Original <-> Hugging Face key names of the frozen parts, and the position-embedding resize.

EVA-ViT (``eva_vit_g.pth``, flat) and LAVIS BLIP-2 (``blip2_pretrained_flant5xxl.pth``, ``{"model": ...}``) keys
become this library's ``VisionTower`` keys (transformers' ``Blip2VisionModel``/``Blip2QFormerModel`` names);
a Hugging Face BLIP-2 folder is read as is; and a tower can be written back in the original layouts.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

import torch
from safetensors import safe_open

from minigpt4.models.weight_files import CheckpointError, check_safetensors, label, load_torch, tensor_dict

log = logging.getLogger(__name__)


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
def read_hf_blip2_folder(folder: Path, what: str | None = None) -> dict:
    """Read only ``vision_model.*``, ``qformer.*`` and ``query_tokens`` from a HF BLIP-2 folder."""
    wanted = ("vision_model.", "qformer.", "query_tokens")
    files = sorted(folder.glob("*.safetensors"))
    state = {}
    if files:
        for file in files:
            check_safetensors(file, what)
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    if key.startswith(wanted):
                        state[key] = f.get_tensor(key)
    else:
        bins = sorted(folder.glob("pytorch_model*.bin"))
        if not bins:
            raise CheckpointError(f"{label(folder, what)} has neither *.safetensors nor pytorch_model*.bin weights")
        for file in bins:
            state.update({k: v for k, v in tensor_dict(load_torch(file, what), label(file, what)).items()
                          if k.startswith(wanted)})
    # older exports keep q_bias/v_bias separately
    for key in [k for k in state if k.endswith("self_attn.q_bias")]:
        prefix = key[: -len("q_bias")]
        q, v = state.pop(key), state.pop(prefix + "v_bias")
        state[prefix + "qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])
    state.pop("qformer.embeddings.position_ids", None)
    return state


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


