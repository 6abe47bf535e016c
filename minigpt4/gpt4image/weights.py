"""The classifier's config keys and weight files: a local backbone initialisation (``model.backbone_ckpt``,
never a download), the runner's full checkpoints (resume), and the export to a plain timm classifier.

    python -m minigpt4.gpt4image.export --checkpoint output/<run>/<job>/checkpoint_9.safetensors --out model.safetensors

writes the classifier without the projection head; ``timm.create_model(backbone, num_classes=K)`` loads it
with ``strict=True`` (the backbone name, class names and timm kwargs are in the file's metadata).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

from minigpt4.common.fields import ranged
from minigpt4.errors import MissingFile, UsageError
from minigpt4.models.checkpoint import (CheckpointError, load_safetensors, load_torch, read_trainable,
                                       require_file)

log = logging.getLogger(__name__)

OPT_STR, OPT_INT, NUM = (str, type(None)), (int, type(None)), (int, float)
OPT_NUM = (int, float, type(None))
CONFIG_KEYS: dict[str, tuple] = {  # checked when the config loads (fields.check_table), bounds included
    "arch": (str,),
    "model_type": OPT_STR,
    "backbone": (str,),              # any timm model name: resnet50, deit_base_patch16_224, convnext_tiny ...
    "backbone_ckpt": OPT_STR,        # local initial weights (timm/torchvision state dict); null = random init
    "backbone_kwargs": (dict, type(None)),  # extra timm.create_model kwargs (e.g. embed_dim, depth)
    "img_size": ranged(OPT_INT, ge=1),  # passed to timm (ViTs)
    "drop_path_rate": ranged(OPT_NUM, ge=0, lt=1),
    "drop_rate": ranged(OPT_NUM, ge=0, lt=1),
    "num_classes": ranged(OPT_INT, ge=1),  # default: the number of class folders
    "text_dim": ranged(OPT_INT, ge=1),     # default: the embedding file's dimension
    "head_type": (str,),             # auto | bn | mlp | linear
    "lambda": ranged(NUM, ge=0),     # weight of the alignment loss; 0 = plain cross-entropy baseline
    "align_loss": (str,),            # clip | ctr | byol
    "tau": ranged(NUM, gt=0),        # fixed temperature (0.2 CNNs, 0.05 ViTs in the recipes)
    "label_smoothing": ranged(NUM, ge=0, lt=1),
    "mixup": ranged(NUM, ge=0),      # Beta(alpha, alpha) of timm Mixup; 0 = off
    "cutmix": ranged(NUM, ge=0),
    "mixup_prob": ranged(NUM, ge=0, le=1),
    "mixup_switch_prob": ranged(NUM, ge=0, le=1),
    "device": OPT_STR,
}


def _unwrap(state):
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            return state[key]
    return state


def load_backbone_weights(backbone: torch.nn.Module, path) -> None:
    """Initialise ``backbone`` from a local file (safetensors or .pth/.bin state dict). The classifier layer is
    skipped when its shape differs (another class count); every other weight must be present and fit."""
    path = require_file(path, "backbone_ckpt")
    what = "model.backbone_ckpt"
    state = load_safetensors(path, what) if path.suffix == ".safetensors" else _unwrap(load_torch(path, what))
    if not isinstance(state, dict):
        raise CheckpointError(f"model.backbone_ckpt {path}: expected a state dict, got {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = backbone.state_dict()
    classifier = backbone.pretrained_cfg.get("classifier", "fc") if hasattr(backbone, "pretrained_cfg") else "fc"
    names = [classifier] if isinstance(classifier, str) else list(classifier)
    dropped = [k for k in list(state) if any(k.startswith(n + ".") for n in names)
               and k in own and state[k].shape != own[k].shape]
    for k in dropped:
        del state[k]
    wrong = [k for k in state if k in own and state[k].shape != own[k].shape]
    if wrong:
        raise CheckpointError(f"model.backbone_ckpt {path}: {wrong[0]} is {list(state[wrong[0]].shape)}, the "
                              f"backbone needs {list(own[wrong[0]].shape)} (a checkpoint of another model?)")
    result = backbone.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not any(k.startswith(n + ".") for n in names)]
    if missing:
        raise CheckpointError(f"model.backbone_ckpt {path}: {len(missing)} backbone weights missing, e.g. {missing[0]}")
    log.info("backbone initialised from %s (%d tensors%s, %d unused)", path, len(state),
             f"; classifier {dropped} re-initialised for the new class count" if dropped else "",
             len(result.unexpected_keys))


def load_full_state(model: torch.nn.Module, path) -> None:
    state, _ = read_trainable(Path(path))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise CheckpointError(f"{path}: does not fit this model ({first[1].strip() if len(first) > 1 else first[0]})") \
            from None


def export_classifier(checkpoint, out) -> Path:
    """A runner checkpoint (with its JSON sidecar) -> a plain timm classifier file (no projection head),
    verified by loading it strictly into a fresh ``timm.create_model``."""
    import timm

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise MissingFile(f"--checkpoint {checkpoint}: no such file (a checkpoint_*.safetensors of train.py)")
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"--out {out}: is a folder; name the classifier file, e.g. {out / 'model.safetensors'}")
    if out.resolve().parent == checkpoint.resolve().parent and (out.name.startswith("checkpoint_")
                                                                  or out.name == "resume.pt"):
        raise UsageError(f"--out {out}: is a file of the training run itself ({checkpoint.parent}); "
                         "write the classifier elsewhere")
    state, meta = read_trainable(checkpoint)
    if meta.get("arch") != "gpt4image_classifier":
        raise CheckpointError(f"--checkpoint {checkpoint}: not a gpt4image_classifier checkpoint (its JSON sidecar "
                              "must say arch: gpt4image_classifier)")
    name, classes, kwargs = meta.get("backbone"), meta.get("num_classes"), meta.get("backbone_kwargs") or {}
    sidecar = f"--checkpoint {checkpoint}: its JSON sidecar"
    if not isinstance(name, str) or not isinstance(classes, int) or classes < 1 or not isinstance(kwargs, dict):
        raise CheckpointError(f"{sidecar} needs backbone (a timm name), num_classes (>= 1) and backbone_kwargs (a "
                              f"mapping); it has {name!r}, {classes!r}, {kwargs!r}")
    backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    try:
        fresh = timm.create_model(name, pretrained=False, num_classes=classes, **kwargs)
    except RuntimeError as e:
        if "Unknown model" not in str(e):
            raise
        raise CheckpointError(f"{sidecar} names backbone {name!r}, which timm does not have") from None
    try:
        fresh.load_state_dict(backbone, strict=True)
    except RuntimeError as e:
        first = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        raise CheckpointError(f"{sidecar} ({name}, {classes} classes) does not describe its weights "
                              f"({(first[1] if len(first) > 1 else first[0])[:200]})") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    info = {"backbone": meta["backbone"], "num_classes": str(meta["num_classes"]),
            "class_names": json.dumps(meta.get("class_names", [])),
            "backbone_kwargs": json.dumps(meta.get("backbone_kwargs", {}))}
    save_file({k: v.contiguous() for k, v in backbone.items()}, str(out), metadata=info)
    return out
