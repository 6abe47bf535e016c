"""What every fixer shares: the result type, the ``rules`` and ``none`` fixers, and the factory.

A fixer turns paragraphs into fixed paragraphs. ``fix(items)`` takes ``[(key, text), ...]`` and
yields one :class:`FixResult` per item (in any order), so the stage can write each row as soon as it
is ready. A fixer never raises for one bad row: the row's result carries ``error`` instead.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator

from minigpt4.curate import text_rules
from minigpt4.curate.config import CurateError


@dataclasses.dataclass
class FixResult:
    key: str
    text: str | None = None   # the fixed paragraph
    reply: str | None = None  # what a language-model fixer answered, verbatim (the filter reads it)
    error: str | None = None  # why this row could not be fixed


class Fixer:
    name = "base"

    def fix(self, items: Iterable[tuple[str, str]]) -> Iterator[FixResult]:
        raise NotImplementedError

    def stats(self) -> dict:
        """Counters for the summary (requests, tokens, cost...)."""
        return {}

    def close(self) -> None:
        pass


class RulesFixer(Fixer):
    """Deterministic clean-up (:func:`minigpt4.curate.text_rules.clean`); no model, no network."""

    name = "rules"

    def __init__(self, failure_strings):
        self.failure_strings = list(failure_strings)

    def fix(self, items):
        for key, text in items:
            yield FixResult(key, text_rules.clean(text, self.failure_strings))


class NoFixer(Fixer):
    """Passes paragraphs through unchanged (to filter and review raw descriptions)."""

    name = "none"

    def fix(self, items):
        for key, text in items:
            yield FixResult(key, text)


def make_fixer(cfg) -> Fixer:
    """The fixer named by ``curate.fix.fixer``; ``cfg`` is the whole ``curate`` section."""
    kind = cfg.fix.fixer
    if kind == "rules":
        return RulesFixer(cfg.filter.failure_strings)
    if kind == "none":
        return NoFixer()
    if kind == "openai":
        from minigpt4.curate.fix_openai import OpenAIFixer

        return OpenAIFixer(cfg.fix.openai, cfg.fix.prompt)
    if kind == "hf":
        from minigpt4.curate.fix_hf import HFFixer

        return HFFixer(cfg.fix.hf, cfg.fix.prompt)
    raise CurateError(f"curate.fix.fixer: unknown fixer {kind!r}")
