"""The work folder: one file per stage, read back by the next stage.

    described.jsonl   {"key", "image", "first", "continuation", "text", "tokens", "continued"} | {"key", "image"?, "error"}
    fixed.jsonl       {"key", "fixer", "text", "reply"} | {"key", "fixer", "fix_error"}
    filtered.jsonl    {"key", "verdict": "keep"|"reject", "reason", "text"}
    review.html       the page for the manual pass
    reviewed.jsonl    filtered rows with a person's edits applied (only when edits are given)
    images/           copies of images that came from webdataset shards
    summary.json      counts of every stage

Row files are append-only JSONL (:class:`minigpt4.sharded_jsonl.JsonlOutput`): a killed stage leaves
whole rows plus at most one cut line, which is dropped on the next run; keys already present are not
redone. Whole-file outputs are written to a temporary name and renamed, so they are complete or absent.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from minigpt4.curate.config import CurateError
from minigpt4.errors import UserError, out_folder

FILES = {"describe": "described.jsonl", "fix": "fixed.jsonl", "filter": "filtered.jsonl",
         "review": "review.html", "apply-review": "reviewed.jsonl", "summary": "summary.json"}


class WorkDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, stage: str) -> Path:
        return self.root / FILES[stage]

    @property
    def images(self) -> Path:
        return self.root / "images"

    def make(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def rows(self, stage: str, *, required_by: str | None = None) -> list[dict]:
        """The complete rows of a stage's JSONL (a cut last line is ignored)."""
        path = self.path(stage)
        if not path.exists():
            if required_by:
                raise CurateError(f"{path} does not exist: run the {stage} stage before {required_by} "
                                  f"(--stages {stage},{required_by})")
            return []
        return read_jsonl(path)

    def selected_rows(self) -> list[dict]:
        """The filter verdicts, with a person's review applied when there is one."""
        reviewed = self.path("apply-review")
        return read_jsonl(reviewed) if reviewed.exists() else self.rows("filter", required_by="export")


def read_jsonl(path: Path) -> list[dict]:
    return [row for _, row in numbered_rows(Path(path).read_text(encoding="utf-8"), path)]


def numbered_rows(text: str, path, *, drop_cut_line: bool = True) -> list[tuple[int, dict]]:
    """``(line number, row)`` of a JSONL text; ``drop_cut_line``: a last line without its newline is a row cut
    by a kill and is ignored (the stage files), else it counts (a file written by hand)."""
    if drop_cut_line and text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CurateError(f"{path}:{number}: not JSON ({exc})") from None
        if not isinstance(row, dict) or not isinstance(row.get("key"), str):
            raise CurateError(f"{path}:{number}: a row needs a string 'key', got {line[:80]!r}")
        rows.append((number, row))
    return rows


def check_folder(path, what: str) -> Path:
    """``path`` can be written as a folder (it is not a file, nor under one), else a :class:`CurateError`
    naming ``what``; checked before any stage runs."""
    try:
        return out_folder(path, what)
    except UserError as exc:
        raise CurateError(str(exc)) from None


def by_key(rows: list[dict]) -> dict[str, dict]:
    """Last row per key wins (a file never holds two rows for one key unless a person edited it)."""
    return {row["key"]: row for row in rows}


def write_atomic(path: Path, text: str | bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    data = text.encode("utf-8") if isinstance(text, str) else text
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def digest(*parts) -> str:
    """A short fingerprint of a row's inputs, so a stage notices when what it read has changed."""
    return hashlib.sha1(json.dumps(parts, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def prune(path: Path, keep) -> int:
    """Rewrite a row file without the rows for which ``keep(row)`` is false; returns how many went."""
    path = Path(path)
    if not path.exists():
        return 0
    rows = read_jsonl(path)
    kept = [r for r in rows if keep(r)]
    if len(kept) != len(rows) or path.read_bytes().count(b"\n") != len(rows):
        write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    return len(rows) - len(kept)
