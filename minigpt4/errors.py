"""The library's user errors: what the command-line entry points print as one line.

Every error that is the user's to fix (a config key, a weight file, a flag, an image, a prompt
that does not fit) derives from :class:`UserError`. Entry points catch ``UserError`` only, so a
bug raised inside torch, transformers or this library keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user asked for or pointed at is wrong; the message names it."""
