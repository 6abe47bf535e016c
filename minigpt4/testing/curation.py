"""Curation work folders written by hand (described rows and their pictures, no model needed)."""
from __future__ import annotations

import json
from pathlib import Path

from minigpt4.testing.golden import draw_scene

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
