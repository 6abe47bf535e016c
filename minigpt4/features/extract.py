"""Extraction: every sample of a dataset through the frozen vision tower, once, into a feature store.

Samples are keyed as training looks them up (:func:`sample_key`): ``cc_sbu_align`` by image id, a
webdataset by ``<shard file name>/<sample key>``. Rank ``r`` of ``W`` takes every ``W``-th sample
(map-style) or every ``W``-th shard (webdataset, shards in sorted order), so ranks never write the same
key. Every ``shard_size`` samples a rank writes one shard; a rerun reads the keys already stored and
computes only the rest. Unreadable images are counted and left out (training skips them the same way).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from minigpt4.common import dist as D
from minigpt4.common.config import ConfigError
from minigpt4.datasets import skips
from minigpt4.datasets.align import CCSBUAlignDataset
from minigpt4.datasets.webdata import (WebImageTextDataset, check_samples, decode_images, group_samples,
                                       number_samples, store_key, tar_members)
from minigpt4.errors import UsageError, out_folder
from minigpt4.features import store as S
from minigpt4.images import ImageTooLarge, UnreadableImage, open_image

log = logging.getLogger(__name__)


def align_key(ann: dict) -> str:
    return str(ann["image_id"])


def _images(dataset, rank: int, world_size: int, counter: skips.SkipCounter):
    """``(key, PIL image)`` of this rank's samples, in a fixed order; bad ones counted and dropped."""
    if isinstance(dataset, CCSBUAlignDataset):
        seen = set()
        for i in range(rank, len(dataset.annotations), world_size):
            ann = dataset.annotations[i]
            key = align_key(ann)
            if key in seen:
                continue
            seen.add(key)
            try:
                yield key, open_image(ann["path"], max_pixels=dataset.max_image_pixels)
            except (FileNotFoundError, ImageTooLarge, UnreadableImage) as exn:
                counter.add(skips.BAD_IMAGE, f"{ann['path']}: {exn}")
    elif isinstance(dataset, WebImageTextDataset):
        urls = sorted(dataset.urls)[rank::world_size]
        samples = group_samples(tar_members([{"url": u} for u in urls], counter))
        samples = decode_images(check_samples(number_samples(samples, 0, counter), counter),
                                dataset.max_image_pixels, counter)
        for sample in samples:
            image = next(sample[k] for k in ("jpg", "jpeg", "png", "webp") if k in sample)
            yield store_key(sample["__url__"], sample["__key__"]), image
    else:
        raise ConfigError(f"dataset {getattr(dataset, 'name', '?')!r}: feature extraction reads cc_sbu_align "
                          f"folders and webdataset shards, not {type(dataset).__name__}")


class _Writer:
    def __init__(self, folder: Path, rank: int, shard_size: int):
        self.folder, self.rank, self.shard_size = folder, rank, shard_size
        mine = sorted(folder.glob(f"part-r{rank:04d}-*.safetensors"))
        self.next = int(mine[-1].stem.rsplit("-", 1)[1]) + 1 if mine else 0
        self.keys: list[str] = []
        self.rows: list[torch.Tensor] = []
        self.written = 0

    def add(self, keys, features: torch.Tensor) -> None:
        self.keys += keys
        self.rows += list(features.detach().cpu())
        if len(self.keys) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.keys:
            return
        S.write_shard(self.folder / S.shard_name(self.rank, self.next), self.keys, torch.stack(self.rows))
        self.written += len(self.keys)
        self.next += 1
        self.keys, self.rows = [], []


def _prepare(out: Path, meta: dict) -> str | None:
    """Rank 0: create the folder and its meta.json, or check that it holds this store, setting aside shards
    that cannot be read (the store is then unfinished until this run completes it). Returns a refusal."""
    try:
        out_folder(out, "--out", create=True)
    except UsageError as exn:
        return str(exn)
    old = S.read_meta(out)
    fixed = ("format", "tower", "processor")
    if old is not None and {k: old.get(k) for k in fixed} != {k: meta[k] for k in fixed}:
        return f"--out {out}: holds features of another tower or processor; use an empty folder"
    if old is None and any(out.iterdir()):
        return f"--out {out}: not empty and not a feature store; use an empty folder"
    bad = S.unreadable_shards(out)
    if old is None or not old.get("complete") or bad:
        S.write_meta(out, meta)  # unfinished (again) until this run has extracted what is missing
    S.set_aside(bad)
    return None


@torch.no_grad()
def extract(tower, dataset, vis_processor, vis_cfg, out: str | Path, *, batch_size: int = 16,
            shard_size: int = 1024, rank: int = 0, world_size: int = 1, where: str = "vis_processor.train") -> dict:
    """Write (or complete) the store ``out`` for ``dataset``; returns counts for this rank."""
    out = Path(out)
    processor = S.processor_fingerprint(vis_cfg, where)
    meta = {"format": S.FORMAT, "tower": S.tower_fingerprint(tower), "processor": processor,
            "dataset": getattr(dataset, "name", ""), "complete": False}
    error = _prepare(out, meta) if rank == 0 else None
    error = D.broadcast_object(error)  # every rank stops on rank 0's refusal instead of waiting for it
    if error:
        raise ConfigError(error)
    done = set()
    for shard in sorted(out.glob("part-*.safetensors")):
        done.update(S.shard_keys(shard))
    writer = _Writer(out, rank, shard_size)
    counter = skips.SkipCounter(getattr(dataset, "name", "features"))
    device = next(tower.parameters()).device
    keys, pixels, reused = [], [], 0

    def run():
        feats = tower(torch.stack(pixels).to(device))
        writer.add(list(keys), feats.float() if feats.dtype != torch.float32 else feats)
        keys.clear()
        pixels.clear()

    for key, image in _images(dataset, rank, world_size, counter):
        if key in done:
            reused += 1
            continue
        try:
            pixels.append(vis_processor(image))
        except Exception as exn:  # noqa: BLE001  (a processor failure is a counted skip, as in training)
            counter.add(skips.BAD_IMAGE, f"{key}: {exn!r}")
            continue
        keys.append(key)
        if len(keys) == batch_size:
            run()
    if keys:
        run()
    writer.flush()
    counts = D.all_gather_object({"written": writer.written, "reused": reused, "skipped": counter.take()})
    D.barrier()
    if rank == 0:
        S.write_meta(out, {**meta, "complete": True})
    D.barrier()
    total = {"written": sum(c["written"] for c in counts), "reused": sum(c["reused"] for c in counts),
             "skipped": {}}
    for c in counts:
        skips.merge_counts(total["skipped"], c["skipped"])
    return total
