"""Listing the files under a folder without losing any silently: every entry that is not read comes back
with the reason (a dangling or looping link, a FIFO/socket/device, a sub-folder that cannot be listed).

Links to files are read; links to folders are followed once (a folder reached a second time, e.g. through
a link to a parent, is reported as a loop and not entered again). File names that are not UTF-8 are kept
as Python keeps them (lone surrogates; ``os.fsencode`` gives the bytes back).
"""
from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

_SHOW = 3


def walk_files(folder: Path, hidden: bool = False) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(regular files under ``folder``, sorted by path; entries left out, each with its reason). Hidden
    entries (names starting with ``.``) are neither listed nor reported unless ``hidden``."""
    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    seen: set[tuple[int, int]] = set()

    def visit(path: Path) -> None:
        try:
            st = os.stat(path)
        except OSError as exc:
            skipped.append((path, _stat_problem(exc)))
            return
        if (st.st_dev, st.st_ino) in seen:
            skipped.append((path, "folder already listed (a link loop, or a second link to it)"))
            return
        seen.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as exc:
            skipped.append((path, f"cannot list this folder ({exc.strerror})"))
            return
        for entry in entries:
            if not hidden and entry.name.startswith("."):
                continue
            child = Path(entry.path)
            try:
                st = os.stat(child)
            except OSError as exc:
                skipped.append((child, _stat_problem(exc)))
                continue
            if stat.S_ISDIR(st.st_mode):
                if entry.is_symlink() and top.is_relative_to(child.resolve()):
                    skipped.append((child, "link to a folder that holds the listed one (a loop)"))
                else:
                    visit(child)
            elif stat.S_ISREG(st.st_mode):
                files.append(child)
            else:
                skipped.append((child, "not a regular file (FIFO, socket or device)"))

    top = Path(folder).resolve()
    visit(Path(folder))
    return sorted(files), skipped


def _stat_problem(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "link loop"
    if exc.errno == errno.ENOENT:
        return "dangling link (its target does not exist)"
    return f"cannot read ({exc.strerror})"


def log_skipped(folder: Path, skipped: list[tuple[Path, str]]) -> None:
    """One warning per reason: how many entries, and the first few."""
    by_reason: dict[str, list[Path]] = {}
    for path, reason in skipped:
        by_reason.setdefault(reason, []).append(path)
    for reason, paths in by_reason.items():
        shown = ", ".join(str(p) for p in paths[:_SHOW]) + (", ..." if len(paths) > _SHOW else "")
        log.warning("%s: left out %d entr%s: %s: %s", folder, len(paths), "y" if len(paths) == 1 else "ies",
                    reason, shown)
