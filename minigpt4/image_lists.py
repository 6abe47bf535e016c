"""Labelled image listings: an image-classification folder (``ROOT/<class>/...``), a CSV/JSONL list of
``path,label``, and readable class names.

Every item is keyed by its path relative to ROOT (POSIX separators), never by position. A list's paths
are relative to ROOT or absolute (then inside ROOT). Problems with a listing are ``ValueError`` naming the
flag, file and line; an unreadable image is found later, when it is loaded (an error row).
"""
from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

from minigpt4.errors import UsageError, read_text_file

log = logging.getLogger(__name__)


def class_folder_items(root: Path):
    """``(items, others)``: images under ``root/<class>/`` labelled with ``<class>`` (the first path
    component), and the files left out (non-images, and images directly in ``root``)."""
    from minigpt4.caption_io import folder_items

    items, others = folder_items(root)
    loose = [item for item in items if "/" not in item.key]
    if loose:
        log.warning("%s: left out %d image(s) directly in the folder (no class folder), e.g. %s",
                    root, len(loose), loose[0].key)
    labelled = [item for item in items if "/" in item.key]
    for item in labelled:
        item.label = item.key.split("/", 1)[0]
    if not labelled:
        raise UsageError(f"--images {root}: no image in a class folder (expected ROOT/<class>/<image>)")
    return labelled, others + [Path(item.source) for item in loose]


def relative_key(value: str, root: Path, where: str) -> str:
    """The key of a listed path: its path relative to ``root`` (lexically; ``..`` may not leave it)."""
    if not value:
        raise UsageError(f"{where}: empty path")
    base = os.path.normpath(os.path.abspath(root))
    full = os.path.normpath(value if os.path.isabs(value) else os.path.join(base, value))
    if os.path.commonpath([base, full]) != base or full == base:
        raise UsageError(f"{where}: {value} is outside --images {root}")
    return Path(os.path.relpath(full, base)).as_posix()


def read_list(list_file: Path) -> list[tuple[str, str, str]]:
    """``(where, path, label)`` rows of a CSV (header with ``path`` and ``label``) or JSONL
    (``{"path", "label"}`` per line) file."""
    text = read_text_file(list_file, "--list", encoding="utf-8-sig")
    rows = []
    if list_file.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            where = f"--list {list_file}:{number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{where}: not JSON ({exc})") from None
            missing = [c for c in ("path", "label") if not isinstance(obj, dict) or obj.get(c) in (None, "")]
            if missing:
                raise UsageError(f"{where}: missing {' and '.join(repr(c) for c in missing)} "
                                 '(each line is {"path": ..., "label": ...})')
            rows.append((where, str(obj["path"]), str(obj["label"])))
    else:
        reader = csv.DictReader(text.splitlines())
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in ("path", "label") if c not in header]
        if missing:
            raise UsageError(f"--list {list_file}: no {' or '.join(repr(c) for c in missing)} column "
                             f"(header: {','.join(header) or 'none'}); the first line must name path,label")
        reader.fieldnames = header
        for number, rec in enumerate(reader, 2):
            where = f"--list {list_file}:{number}"
            path, label = (rec.get("path") or "").strip(), (rec.get("label") or "").strip()
            if not label:
                raise UsageError(f"{where}: empty label")
            rows.append((where, path, label))
    if not rows:
        raise UsageError(f"--list {list_file}: no rows")
    return rows


def list_items(list_file: Path, root: Path):
    """Items of a list file, in its order; a path listed twice is an error."""
    from minigpt4.caption_io import Item
    from minigpt4.conversation.conversation import load_image
    from minigpt4.images import DEFAULT_MAX_IMAGE_PIXELS

    items, first = [], {}
    for where, value, label in read_list(Path(list_file)):
        key = relative_key(value, root, where)
        if key in first:
            raise UsageError(f"{where}: {key} is listed twice (first at line {first[key].rsplit(':', 1)[1]})")
        first[key] = where
        path = Path(root) / key
        items.append(Item(key, str(path), lambda max_pixels=DEFAULT_MAX_IMAGE_PIXELS, p=path: load_image(p, max_pixels), label=label))
    return items


def read_label_names(path: Path) -> dict[str, str]:
    """Class id -> name from JSON (``{"id": "name"}`` or ``{"0": ["id", "name"]}``), CSV (two columns
    ``id,name``, an optional header) or text (``id name, synonym, ...`` per line: the first name)."""
    path = Path(path)
    text = read_text_file(path, "--label-names", encoding="utf-8-sig")
    names: dict[str, str] = {}
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--label-names {path}: not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise UsageError(f"--label-names {path}: expected a JSON object id -> name")
        for key, value in data.items():
            if isinstance(value, list) and len(value) == 2:
                key, value = value
            if not isinstance(value, str):
                raise UsageError(f"--label-names {path}: the entry {key!r} is not a name (or an [id, name] pair)")
            names[str(key)] = value
    elif suffix == ".csv":
        for number, rec in enumerate(csv.reader(text.splitlines()), 1):
            if not rec or not "".join(rec).strip():
                continue
            if len(rec) < 2:
                raise UsageError(f"--label-names {path}:{number}: expected two columns id,name")
            if number == 1 and [c.strip().lower() for c in rec[:2]] in (["id", "name"], ["label", "name"]):
                continue
            names[rec[0].strip()] = ",".join(rec[1:]).strip()
    else:
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            parts = line.strip().split(None, 1)
            if len(parts) < 2:
                raise UsageError(f"--label-names {path}:{number}: expected 'id name' per line")
            names[parts[0]] = parts[1].split(",")[0].strip()
    if not names:
        raise UsageError(f"--label-names {path}: no names")
    return names


def readable_names(labels, names: dict[str, str] | None, names_file=None) -> dict[str, str]:
    """Label -> the name put in a prompt (underscores as spaces). With ``names``, every label needs one."""
    labels = sorted(set(labels))
    if names is not None:
        missing = [label for label in labels if label not in names]
        if missing:
            raise UsageError(f"--label-names {names_file}: no name for {len(missing)} of {len(labels)} label(s), "
                             f"e.g. {missing[0]!r}")
    return {label: (names[label] if names is not None else label).replace("_", " ").strip() for label in labels}
