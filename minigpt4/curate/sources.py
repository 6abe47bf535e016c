"""The images to curate: a folder (recursive) or webdataset shards, all of them or N drawn with a seed.

Items are :class:`minigpt4.caption_io.Item` (key, source, ``load()``), in folder / shard order. Drawing N
of them is reproducible: the same ``seed`` and the same images give the same N keys, whatever the
number of processes.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Iterator

from minigpt4.caption_io import Item, ShardErrors, folder_items, shard_items
from minigpt4.curate.config import CurateError

log = logging.getLogger(__name__)


def _keys_sample(keys: list[str], num: int | None, seed: int) -> set[str] | None:
    if num is None or num >= len(keys):
        return None
    return set(random.Random(seed).sample(sorted(keys), num))


def select(images: str | None, num: int | None, seed: int, errors: ShardErrors | None = None) -> Iterator[Item]:
    """The chosen items. A folder without images, or missing shards, is a :class:`CurateError`."""
    if not images:
        raise CurateError("curate.images (--images) is not set: give a folder of images or a shard pattern")
    errors = errors or ShardErrors()
    if Path(images).is_dir():
        items, others = folder_items(Path(images))
        if not items:
            raise CurateError(f"curate.images (--images): {images} holds no image files"
                              + (f" ({len(others)} other file(s), e.g. {others[0].name})" if others else ""))
        chosen = _keys_sample([i.key for i in items], num, seed)
        return iter(items if chosen is None else [i for i in items if i.key in chosen])
    if ".tar" not in images:
        raise CurateError(f"curate.images (--images): {images} is not a folder nor a .tar shard pattern")
    try:
        first_pass = shard_items(images, errors)
    except FileNotFoundError as exc:
        raise CurateError(str(exc).replace("--images", "curate.images (--images)")) from None
    keys = [item.key for item in first_pass]
    if not keys:
        raise CurateError(f"curate.images (--images): the shards {images} hold no samples")
    chosen = _keys_sample(keys, num, seed)
    return (item for item in shard_items(images, errors) if chosen is None or item.key in chosen)
