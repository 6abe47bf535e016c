"""Work folders for the curation tests: described rows written by hand (no model needed)."""
from __future__ import annotations

import json
from pathlib import Path

from inference_config import draw_scene
from minigpt4 import curate

PARAGRAPH = "A {} square sits in the middle of the picture. The background is plain and evenly lit."


def described_workdir(root: Path, texts: dict[str, str]) -> Path:
    """``root/work/described.jsonl`` with one described row per key, and its images in ``root/images``."""
    work, images = root / "work", root / "images"
    work.mkdir(parents=True, exist_ok=True)
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (key, text) in enumerate(texts.items()):
        path = images / f"{key}.png"
        draw_scene(i).save(path)
        rows.append({"key": key, "image": str(path), "first": text, "first_tokens": 90, "text": text,
                     "continued": False})
    (work / "described.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return work


def rows(path) -> list[dict]:
    """Complete rows (a line cut by a kill, without its newline, is not a row yet)."""
    text = Path(path).read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]


def one_per_key(path) -> dict[str, dict]:
    rs = rows(path)
    keys = [r["key"] for r in rs]
    assert len(keys) == len(set(keys)), f"duplicate rows in {path}"
    return {r["key"]: r for r in rs}


def config(work: Path, *options: str, **kw):
    return curate.load_config(None, list(options), work_dir=work, **kw)
