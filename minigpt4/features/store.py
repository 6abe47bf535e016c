"""A persistent store of frozen vision-tower outputs, keyed by sample.

Layout of a store folder::

    meta.json                          format, fingerprint (tower, processor, image size), complete flag
    part-r<rank>-<n>.safetensors       one tensor "features" [N, tokens, dim]; metadata "keys": JSON list

The fingerprint is what makes a stored feature equal to what the tower would compute from the
pixels: a digest of every tensor of the tower (ViT, ln_vision, Q-Former, query tokens) with its
shape and dtype, and the image processor as a transform (which must be deterministic). Training refuses
a store whose fingerprint differs from its own tower and ``vis_processor.train``, and an unfinished one.
Shards are written whole under a temporary name and renamed, so an interrupted extraction leaves only
complete shards and continues from them; a shard damaged afterwards (cut short, emptied) is set aside by
the next extraction, which computes its samples again, and named by training, which refuses the store.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from minigpt4.common.config import ConfigError

log = logging.getLogger(__name__)

FORMAT = 1
META = "meta.json"
CLIP_DEFAULTS = {"image_size": 224, "mean": [0.48145466, 0.4578275, 0.40821073],
                 "std": [0.26862954, 0.26130258, 0.27577711]}


def _plain(cfg) -> dict:
    if cfg is None:
        return {}
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return dict(cfg)


def processor_fingerprint(vis_cfg, where: str) -> dict:
    """The transform a processor config applies, normalised so that equal transforms compare equal;
    a random augmentation is refused (its features would differ every epoch)."""
    cfg = _plain(vis_cfg)
    name = cfg.get("name")
    if name == "blip2_image_eval" or (name == "blip2_image_train" and cfg.get("deterministic", False)):
        transform = "bicubic_resize"
    elif name == "blip2_image_train":
        raise ConfigError(f"{where}: blip2_image_train crops at random, so its vision features change every "
                          f"epoch; a feature store needs a deterministic processor (blip2_image_eval, or "
                          f"blip2_image_train with deterministic: true)")
    else:
        raise ConfigError(f"{where}: the feature store knows the processors blip2_image_eval and "
                          f"blip2_image_train (deterministic: true), got {name!r}")
    return {"transform": transform, "image_size": int(cfg.get("image_size", CLIP_DEFAULTS["image_size"])),
            "mean": [float(x) for x in cfg.get("mean", CLIP_DEFAULTS["mean"])],
            "std": [float(x) for x in cfg.get("std", CLIP_DEFAULTS["std"])]}


def tower_fingerprint(tower) -> dict:
    """Digest of every parameter and buffer of the vision tower, plus its output shape."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted({**dict(tower.named_parameters()), **dict(tower.named_buffers())}.items()):
        t = t.detach().contiguous().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"digest": h.hexdigest(), "has_qformer": bool(tower.has_qformer), "num_tokens": int(tower.num_tokens),
            "feature_dim": int(tower.feature_dim)}


def shard_name(rank: int, n: int) -> str:
    return f"part-r{rank:04d}-{n:06d}.safetensors"


def read_meta(folder: Path) -> dict | None:
    path = Path(folder) / META
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exn:
        raise ConfigError(f"{path}: not a feature-store meta.json ({exn})") from None


def write_meta(folder: Path, meta: dict) -> None:
    path = Path(folder) / META
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
    os.replace(tmp, path)


class UnreadableShard(ConfigError):
    """A shard file whose header cannot be read (cut short, emptied, or not a shard); names the file."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: not a readable feature-store shard ({reason})")
        self.path, self.reason = Path(path), reason


def shard_keys(path: Path) -> list[str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = json.loads((f.metadata() or {})["keys"])
    except SafetensorError as exn:
        raise UnreadableShard(path, str(exn).removeprefix("Error while deserializing header: ")) from None
    except (KeyError, ValueError):
        raise UnreadableShard(path, "no JSON list of sample keys in its metadata") from None
    if not isinstance(keys, list):
        raise UnreadableShard(path, "no JSON list of sample keys in its metadata")
    return keys


def unreadable_shards(folder: Path) -> list[UnreadableShard]:
    """The shards of ``folder`` whose header cannot be read, as the errors naming them."""
    bad = []
    for shard in sorted(Path(folder).glob("part-*.safetensors")):
        try:
            shard_keys(shard)
        except UnreadableShard as exn:
            bad.append(exn)
    return bad


def set_aside(bad: list[UnreadableShard]) -> None:
    """Rename each unreadable shard to ``<name>.unreadable``, so that its samples are extracted again."""
    for exn in bad:
        target = exn.path.with_name(exn.path.name + ".unreadable")
        os.replace(exn.path, target)
        log.warning("%s; renamed to %s and its samples are extracted again (delete that file once the store "
                    "is complete)", exn, target.name)


def write_shard(path: Path, keys: list[str], features: torch.Tensor) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({"features": features.contiguous()}, str(tmp), metadata={"keys": json.dumps(keys)})
    os.replace(tmp, path)


class FeatureStore:
    """Read side: ``store.get(key) -> Tensor[tokens, dim]`` (None for a key that is not stored)."""

    def __init__(self, folder, where: str = "feature_store"):
        self.folder = Path(folder)
        self.where = where
        meta = read_meta(self.folder) if self.folder.is_dir() else None
        if meta is None:
            raise ConfigError(f"{where}: {str(self.folder)!r} is not a feature store (no {META}); create it with "
                              f"python -m minigpt4.features extract --cfg-path ... --out {self.folder}")
        if meta.get("format") != FORMAT:
            raise ConfigError(f"{where}: {self.folder} has store format {meta.get('format')!r}, expected {FORMAT}")
        if not meta.get("complete"):
            raise ConfigError(f"{where}: the extraction into {self.folder} did not finish; run the same extract "
                              f"command again to complete it")
        self.meta = meta
        self.index: dict[str, tuple[str, int]] = {}
        for shard in sorted(self.folder.glob("part-*.safetensors")):
            try:
                keys = shard_keys(shard)
            except UnreadableShard as exn:
                raise ConfigError(f"{where}: {exn}; run the extract command that made {self.folder} again: it "
                                  f"sets the file aside and extracts its samples anew") from None
            for row, key in enumerate(keys):
                self.index[key] = (shard.name, row)
        self._open: dict[str, object] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict:  # DataLoader workers started with spawn reopen the files themselves
        return {**self.__dict__, "_open": {}}

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def get(self, key: str) -> torch.Tensor | None:
        where = self.index.get(key)
        if where is None:
            return None
        if self._pid != os.getpid():  # a DataLoader worker opens its own files
            self._open, self._pid = {}, os.getpid()
        handle = self._open.get(where[0])
        if handle is None:
            from safetensors import safe_open

            handle = self._open[where[0]] = safe_open(str(self.folder / where[0]), framework="pt")
        return handle.get_slice("features")[where[1]].clone()

    def check_processor(self, vis_cfg, where: str) -> None:
        mine = processor_fingerprint(vis_cfg, where)
        if mine != self.meta["processor"]:
            raise ConfigError(f"{where}: the feature store {self.folder} was made with processor "
                              f"{self.meta['processor']}, this config has {mine}; extract a store for it")

    def check_tower(self, tower, where: str) -> None:
        mine = tower_fingerprint(tower)
        theirs = self.meta["tower"]
        if mine != theirs:
            diff = sorted(k for k in mine if mine[k] != theirs.get(k))
            raise ConfigError(f"{where}: the feature store {self.folder} was made with another vision tower "
                              f"({', '.join(diff)} differ: store {[theirs.get(k) for k in diff]}, model "
                              f"{[mine[k] for k in diff]}); extract a store with this model's vit_ckpt/q_former_model")


def check_stores(model, datasets: dict) -> None:
    """Refuse training on a store made with another tower than ``model``'s (called once per run)."""
    checked = False
    for name, splits in datasets.items():
        ds = splits.get("train") if isinstance(splits, dict) else splits
        store = getattr(ds, "feature_store", None)
        if store is None:
            continue
        where = f"datasets.{name}.feature_store"
        if not getattr(model, "vision_frozen", False):
            raise ConfigError(f"{where}: stored features need a frozen vision tower (model.freeze_vit and "
                              f"model.freeze_qformer true)")
        store.check_tower(model.vision, where)
        checked = True
    return checked
