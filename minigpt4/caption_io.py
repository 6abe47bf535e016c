"""Inputs and output of batch captioning: image folders, webdataset shards, and a resumable JSONL file.

An *item* is one candidate image with a stable ``key`` (the path relative to the folder, or the
webdataset ``__key__``). ``item.load()`` returns an RGB PIL image or raises ``ValueError`` with the
reason, so a bad image becomes an error row instead of stopping the run.
"""
from __future__ import annotations

import dataclasses
import io
import logging
from pathlib import Path
from typing import Callable, Iterator

from PIL import Image

from minigpt4.conversation.conversation import load_image
from minigpt4.sharded_jsonl import JsonlOutput  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

SHARD_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")


@dataclasses.dataclass
class Item:
    key: str
    source: str  # the file, or the shard the sample came from
    load: Callable[[], Image.Image]
    error: str | None = None  # known bad before loading (e.g. a sample without an image)
    kind: str = "image"  # output field naming ``source``: "image" (a file) or "shard"


def image_extensions() -> set[str]:
    return {ext.lower() for ext in Image.registered_extensions()}


def folder_items(folder: Path) -> tuple[list[Item], list[Path]]:
    """Image files under ``folder`` (recursive, sorted by relative path; hidden entries ignored) and the
    non-image files that were left out."""
    exts = image_extensions()
    items, others = [], []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.suffix.lower() in exts:
            items.append(Item(rel.as_posix(), str(path), lambda p=path: load_image(p)))
        else:
            others.append(path)
    return items, others


def load_image_bytes(data: bytes, where: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{where}: not a readable image ({type(exc).__name__}: {exc})") from exc


class ShardErrors:
    """webdataset handler: log and count a broken shard/tar member, then go on."""

    def __init__(self):
        self.errors: list[str] = []

    def __call__(self, exc) -> bool:
        self.errors.append(f"{type(exc).__name__}: {exc}")
        log.error("skipping unreadable shard data: %s", self.errors[-1])
        return True


def shard_items(pattern: str, errors: ShardErrors) -> Iterator[Item]:
    """Samples of webdataset shards (a brace pattern such as ``data/{00000..00009}.tar``), raw bytes.
    Missing shard files are an error right away."""
    import webdataset as wds
    from braceexpand import braceexpand

    urls = list(braceexpand(pattern))
    missing = [u for u in urls if "://" not in u and not Path(u).exists()]
    if missing:
        raise FileNotFoundError(f"--images {pattern}: not a folder, and {len(missing)} shard(s) do not exist, "
                                f"e.g. {missing[0]}")
    return _samples(wds.WebDataset(urls, shardshuffle=False, handler=errors, empty_check=False), pattern)


def _samples(dataset, pattern: str) -> Iterator[Item]:
    for sample in dataset:
        key, url = sample["__key__"], sample.get("__url__", pattern)
        ext = next((e for e in SHARD_IMAGE_EXTS if e in sample), None)
        if ext is None:
            fields = sorted(k for k in sample if not k.startswith("__"))
            yield Item(key, url, lambda: None, error=f"no image in the sample (fields: {', '.join(fields)})",
                       kind="shard")
            continue
        data = sample[ext]
        yield Item(key, url, lambda d=data, w=f"{url}:{key}.{ext}": load_image_bytes(d, w), kind="shard")
