"""The repository's config folders (``train_configs/``, ``eval_configs/``, ``prompts/``, ``curate_configs/``),
wherever the library runs from: a checkout reads them at its root; an installed package carries a copy as
package data (``minigpt4/shipped/<folder>/``, mapped in ``setup.py``), so ``--cfg-path
train_configs/tiny_stage1.yaml`` and the tiny world's own configs work outside the checkout too.
"""
from __future__ import annotations

from pathlib import Path

FOLDERS = ("train_configs", "eval_configs", "prompts", "curate_configs")
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
ROOTS = (PACKAGE_ROOT.parent, PACKAGE_ROOT / "shipped")  # a checkout's root, then the installed copy


def shipped_file(relative: str | Path) -> Path | None:
    """``train_configs/tiny_stage1.yaml`` -> the checkout's file, else the installed copy; None when neither
    exists (or the path is not inside one of :data:`FOLDERS`)."""
    relative = Path(relative)
    if relative.is_absolute() or not relative.parts or relative.parts[0] not in FOLDERS:
        return None
    for root in ROOTS:
        if (root / relative).is_file():
            return root / relative
    return None


def config_file(relative: str) -> Path:
    """A config the library itself runs (the tiny world's); a broken install is a plain error."""
    found = shipped_file(relative)
    if found is None:
        raise FileNotFoundError(f"{relative} is missing from both {ROOTS[0]} and {ROOTS[1]}: reinstall minigpt4")
    return found
