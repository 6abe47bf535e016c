"""``build_info.storage`` -> the list of shard URLs, checked before any worker starts.

Accepted forms: one string or a list of strings; each is a brace pattern
(``/data/laion/{00000..10488}.tar``, several joined with ``::`` as webdataset allows), a glob
(``/data/cc_sbu/*.tar``), a directory (all ``*.tar``, ``*.tar.gz`` and ``*.tgz`` inside) or a remote
URL (``pipe:``, ``s3://``, ``https://`` ...; not checked). A local pattern that matches no file is an
error naming the dataset and the pattern; a pattern of which only some shards exist (an interrupted
download) is used with a warning that says how many are missing.
"""
from __future__ import annotations

import glob
import logging
import os
import re

from webdataset.shardlists import expand_urls

from minigpt4.common.config import resolve_path
from minigpt4.errors import ConfigError, MissingFile

log = logging.getLogger(__name__)

_REMOTE = re.compile(r"^(pipe:|[a-zA-Z][a-zA-Z0-9+.-]*://)")
_GLOB = re.compile(r"[*?\[]")
_SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def _expand_local(pattern: str) -> tuple[list[str], int]:
    """(existing files, number of expanded names that do not exist)."""
    as_dir = resolve_path(pattern)
    if as_dir.is_dir():
        return sorted(f for ext in _SHARD_SUFFIXES for f in glob.glob(str(as_dir / f"*{ext}"))), 0
    found, missing = [], 0
    for name in expand_urls(pattern):
        if _GLOB.search(name):
            found.extend(sorted(glob.glob(os.path.expanduser(name))))
            continue
        path = resolve_path(name)
        if path.is_file():
            found.append(str(path))
        else:
            missing += 1
    return found, missing


def expand_storage(dataset: str, storage) -> list[str]:
    """Shard URLs for ``datasets.<dataset>.build_info.storage``."""
    key = f"datasets.{dataset}.build_info.storage"
    if storage is None:
        raise ConfigError(f"{key} is not set: point it at the dataset's .tar shards")
    patterns = [storage] if isinstance(storage, str) else [str(p) for p in storage]
    if not patterns:
        raise ConfigError(f"{key} is an empty list: point it at the dataset's .tar shards")
    urls: list[str] = []
    for pattern in patterns:
        pattern = os.path.expanduser(str(pattern))
        if _REMOTE.match(pattern):
            urls.extend(expand_urls(pattern))
            continue
        found, missing = _expand_local(pattern)
        if not found:
            raise MissingFile(
                f"{key}: {pattern!r} matches no file (dataset {dataset!r}); set it to your webdataset "
                f"shards, e.g. --options {key}=/data/{dataset}/{{00000..00099}}.tar "
                f"(see dataset/README_1_STAGE.md)")
        if missing:
            log.warning("dataset %r: %d of %d shards named by %r do not exist; using the %d present",
                        dataset, missing, missing + len(found), pattern, len(found))
        urls.extend(found)
    return urls
