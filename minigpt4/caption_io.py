"""Inputs and output of batch captioning: image folders, webdataset shards, and a resumable JSONL file.

An *item* is one candidate image with a stable ``key`` (the path relative to the folder, or the
webdataset ``__key__``). ``item.load(max_pixels)`` returns an RGB PIL image or raises ``ValueError`` with the
reason, so a bad image becomes an error row instead of stopping the run.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable, Iterator

from PIL import Image

from minigpt4.conversation.conversation import load_image
from minigpt4.errors import MissingFile
from minigpt4.images import DEFAULT_MAX_IMAGE_PIXELS, open_image
from minigpt4.sharded_jsonl import JsonlOutput  # noqa: F401  (re-exported)
from minigpt4.walk import log_skipped, walk_files

log = logging.getLogger(__name__)

SHARD_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")


@dataclasses.dataclass
class Item:
    key: str
    source: str  # the file, or the shard the sample came from
    load: Callable[[], Image.Image]
    error: str | None = None  # known bad before loading (e.g. a sample without an image)
    kind: str = "image"  # output field naming ``source``: "image" (a file) or "shard"
    label: str | None = None  # the class, for a labelled listing


def image_extensions() -> set[str]:
    return {ext.lower() for ext in Image.registered_extensions()}


def folder_items(folder: Path) -> tuple[list[Item], list[Path]]:
    """Image files under ``folder`` (recursive, sorted by relative path; hidden entries ignored) and the
    non-image files that were left out."""
    exts = image_extensions()
    items, others = [], []
    files, skipped = walk_files(folder)  # links, FIFOs and unlistable folders are logged with their reason
    log_skipped(folder, skipped)
    for path in files:
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.suffix.lower() in exts:
            items.append(Item(rel.as_posix(), str(path), lambda max_pixels=DEFAULT_MAX_IMAGE_PIXELS, p=path: load_image(p, max_pixels)))
        else:
            others.append(path)
    return items, others


def load_image_bytes(data: bytes, where: str, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """RGB, or ``ValueError`` (unreadable, or over ``max_pixels``: see :mod:`minigpt4.images`)."""
    return open_image(data, where=where, max_pixels=max_pixels)


class ShardErrors:
    """webdataset handler: log and count a broken shard/tar member, then go on."""

    def __init__(self):
        self.errors: list[str] = []

    def __call__(self, exc) -> bool:
        self.errors.append(f"{type(exc).__name__}: {exc}")
        log.error("skipping unreadable shard data: %s", self.errors[-1])
        return True

    def take(self, counter) -> None:
        """The shard problems a :class:`~minigpt4.datasets.skips.SkipCounter` collected since the last call."""
        counter.take()
        for reason, detail in counter.take_details():
            self.errors.append(f"{reason}: {detail}")
            log.error("skipping unreadable shard data: %s", self.errors[-1])


def shard_urls(pattern: str) -> list[str]:
    """The shards of a brace pattern such as ``data/{00000..00009}.tar`` or a glob such as ``data/*.tar``
    (sorted); missing files are an error."""
    import glob

    from braceexpand import braceexpand

    urls = [hit for part in braceexpand(pattern)
            for hit in (sorted(glob.glob(part)) or [part] if glob.has_magic(part) and "://" not in part else [part])]
    missing = [u for u in urls if "://" not in u and not Path(u).exists()]
    if missing:
        raise MissingFile(f"--images {pattern}: not a folder, and {len(missing)} shard(s) do not exist, "
                          f"e.g. {missing[0]}")
    return urls


def shard_items(pattern: str, errors: ShardErrors, urls: list[str] | None = None) -> Iterator[Item]:
    """Samples of webdataset shards (``urls``, default: all of ``pattern``), raw bytes."""
    urls = shard_urls(pattern) if urls is None else urls
    if not urls:
        return iter(())
    return _samples(_shard_samples(urls, errors), pattern)


def _shard_samples(urls: list[str], errors: ShardErrors):
    """The samples of ``urls`` as training reads them (:mod:`minigpt4.datasets.webdata`): compressed tars
    too, and a shard that ends early, even exactly between two members, is reported."""
    from minigpt4.datasets.skips import SkipCounter
    from minigpt4.datasets.webdata import group_samples, tar_members

    counter = SkipCounter("--images", keep_details=10**9)
    for sample in group_samples(tar_members(({"url": url} for url in urls), counter)):
        errors.take(counter)
        yield sample
    errors.take(counter)


def _samples(dataset, pattern: str) -> Iterator[Item]:
    for sample in dataset:
        key, url = sample["__key__"], sample.get("__url__", pattern)
        if sample.get("__duplicates__"):
            twice = ", ".join(sorted(set(sample["__duplicates__"])))
            yield Item(key, url, lambda: None, error=f"the sample holds more than one {twice} member", kind="shard")
            continue
        ext = next((e for e in SHARD_IMAGE_EXTS if e in sample), None)
        if ext is None:
            fields = sorted(k for k in sample if not k.startswith("__"))
            yield Item(key, url, lambda: None, error=f"no image in the sample (fields: {', '.join(fields)})",
                       kind="shard")
            continue
        data = sample[ext]
        yield Item(key, url, lambda max_pixels=DEFAULT_MAX_IMAGE_PIXELS, d=data, w=f"{url}:{key}.{ext}": load_image_bytes(d, w, max_pixels), kind="shard")


def settings_path(out: Path) -> Path:
    return Path(out).with_name(Path(out).name + ".settings.json")


def check_settings(out: Path, has_rows: bool, settings: dict, write: bool) -> None:
    """Rows already in ``out`` were made with the settings recorded next to it: a rerun with another
    prompt, checkpoint, model or generation setting would keep them silently, so it is refused, naming
    what differs. ``write``: record ``settings`` (the main process) when ``out`` has no rows yet."""
    import json

    from minigpt4.errors import UsageError

    path = settings_path(out)
    settings = json.loads(json.dumps(settings, default=str))
    if has_rows:
        if not path.is_file():
            log.warning("%s has rows but no %s: cannot check they were made with the same settings", out, path.name)
            return
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"--out {out}: its settings file {path} is unreadable ({exc}); delete both to "
                             f"caption again") from None
        changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        if changed:
            raise UsageError(f"--out {out} holds captions made with other settings (different: "
                             f"{', '.join(changed)}; see {path.name}); use another --out, or delete {out.name} and "
                             f"{path.name} to caption again")
        return
    if write:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(settings, indent=1, sort_keys=True), encoding="utf-8")
        tmp.replace(path)
