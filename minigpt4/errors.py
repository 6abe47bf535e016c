"""The library's user errors, and the one boundary where the command-line entry points print them.

Every error that is the user's to fix (a config key, a weight file, a flag, an image, a prompt
that does not fit) derives from :class:`UserError`. Entry points catch ``UserError`` only
(through :func:`user_errors` or :func:`run_cli`), so a bug raised inside torch, transformers or this
library keeps its traceback.
"""

from __future__ import annotations

import contextlib
import sys

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Something the user asked for or pointed at is wrong; the message names it."""


class ConfigError(UserError, ValueError):
    """A config problem, always naming the offending key."""


class UsageError(UserError, ValueError):
    """A command-line flag, or a combination of flags, that cannot work; the message names the flag."""


class MissingFile(UserError, FileNotFoundError):
    """A file or folder named by a config key or a flag does not exist; the message names the key or flag."""


class InvalidFile(UserError, ValueError):
    """A file named by a config key or a flag exists but does not hold what it must; the message names it."""


def report(prog: str, exc: UserError) -> int:
    """Print ``<prog>: error: <message>`` on stderr; returns the exit status of a user error (2)."""
    print(f"{prog}: error: {exc}", file=sys.stderr)
    return EXIT_USER_ERROR


@contextlib.contextmanager
def user_errors(prog: str):
    """The command-line boundary: a :class:`UserError` raised inside becomes one line on stderr,
    ``<prog>: error: <message>``, and ``SystemExit(2)``; every other exception keeps its traceback."""
    try:
        yield
    except UserError as exc:
        raise SystemExit(report(prog, exc)) from None


def run_cli(prog: str, fn, *args, **kwargs) -> int:
    """``fn(*args, **kwargs)`` behind the same boundary, for entry points that return their exit status:
    a :class:`UserError` is reported in one line and gives 2; every other exception keeps its traceback."""
    try:
        return fn(*args, **kwargs)
    except UserError as exc:
        return report(prog, exc)


def read_text_file(path, what: str, encoding: str = "utf-8") -> str:
    """The text of a file a flag or key names (``what``, e.g. ``--list``), or a one-line user error: no such
    file, a folder, or not text in ``encoding`` (an image given for a CSV, say)."""
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{what} {path}: is a folder, not a file")
    if not path.is_file():
        raise MissingFile(f"{what} {path}: no such file")
    try:
        return path.read_text(encoding=encoding)
    except UnicodeDecodeError as exc:
        raise InvalidFile(f"{what} {path}: not a {encoding.removesuffix('-sig').upper()} text file "
                          f"(byte {exc.start}: {exc.reason})") from None


def non_empty(text: str) -> str:
    """An argparse type for a path flag kept as text: refuses an empty value, which ``Path('')`` would
    silently turn into the current folder."""
    import argparse

    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def path_arg(text: str):
    """An argparse type for a path flag: a non-empty value (see :func:`non_empty`) as a ``Path``."""
    from pathlib import Path

    return Path(non_empty(text))


def out_folder(path, what: str, create: bool = False):
    """``path`` as a folder to write into, named by ``what`` (e.g. ``--out``): a one-line :class:`UsageError`
    when it is empty, a file or cannot be created (a parent is a file, no permission, a place that holds no
    folders). Checked only (by making and removing its first missing folder), unless ``create``; returns
    the path."""
    import os
    from pathlib import Path

    if isinstance(path, str) and not path.strip():
        raise UsageError(f"{what} is empty; give a folder")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{what} {path}: is a file, not a folder")
    if not path.exists():
        parent = next((p for p in path.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise UsageError(f"{what} {path}: cannot be created, {parent} is a file")
        if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
            raise UsageError(f"{what} {path}: cannot be created in {parent} (no permission)")
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
        elif not path.exists():
            first = next(p for p in [*reversed(path.parents), path] if not p.exists())
            first.mkdir()
            first.rmdir()
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot create the folder ({exc.strerror or exc})") from None
    return path
