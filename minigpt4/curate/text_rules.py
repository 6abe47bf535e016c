"""Deterministic text clean-up shared by the ``rules`` fixer and the filter.

A *sentence* ends at ``.``, ``!`` or ``?`` followed by a space or the end of the text. Two sentences
repeat each other when they are equal after lower-casing and collapsing spaces and punctuation.
"""
from __future__ import annotations

import re
import unicodedata

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_SPACES = re.compile(r"\s+")
_NORMAL = re.compile(r"[^a-z0-9]+")
_RUN_OF_MARKS = re.compile(r"([^\w\s])\1{2,}")  # "!!!!", "....", "####"
_SPACE_BEFORE_MARK = re.compile(r"\s+([.,!?;:])")
_TEMPLATE_DEBRIS = re.compile(r"#+\s*(Human|Assistant)\s*:?", re.IGNORECASE)
_ALLOWED = set(" .,;:!?'\"()-/%&")


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def normal(sentence: str) -> str:
    return _NORMAL.sub(" ", sentence.lower()).strip()


def repetition(text: str) -> float:
    """Share of sentences that repeat an earlier one (0 for an empty text)."""
    parts = [normal(s) for s in sentences(text)]
    parts = [p for p in parts if p]
    if not parts:
        return 0.0
    return 1.0 - len(set(parts)) / len(parts)


def drop_repeated_sentences(text: str) -> str:
    seen, kept = set(), []
    for sentence in sentences(text):
        key = normal(sentence)
        if key and key not in seen:
            seen.add(key)
            kept.append(sentence)
    return " ".join(kept)


def drop_non_text(text: str) -> str:
    """Template debris (``###Human:``), control and symbol characters, runs of the same mark."""
    text = _TEMPLATE_DEBRIS.sub(" ", text)
    chars = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch.isalnum() or ch in _ALLOWED:
            chars.append(ch)
        elif cat.startswith("Z") or ch in "\n\t":
            chars.append(" ")
    text = "".join(chars)
    text = _RUN_OF_MARKS.sub(lambda m: m.group(1) if m.group(1) in ".!?" else " ", text)
    text = _SPACE_BEFORE_MARK.sub(r"\1", _SPACES.sub(" ", text))
    return text.strip(" ,;:-/")


def drop_incomplete_end(text: str) -> str:
    """Cut an unfinished last sentence; a text with no finished sentence gets a full stop instead."""
    parts = sentences(text)
    if not parts or parts[-1][-1] in ".!?":
        return text.strip()
    if len(parts) == 1:
        return parts[0].rstrip(" ,;:-") + "."
    return " ".join(parts[:-1])


def contains_any(text: str, needles) -> str | None:
    """The first of ``needles`` found in ``text`` (case-insensitive, apostrophes unified), else None."""
    low = text.lower().replace("\u2019", "'")
    for needle in needles:
        if needle.lower().replace("\u2019", "'") in low:
            return needle
    return None


def drop_failure_sentences(text: str, failure_strings) -> str:
    return " ".join(s for s in sentences(text) if contains_any(s, failure_strings) is None)


def clean(text: str, failure_strings) -> str:
    """What the ``rules`` fixer returns: the steps above in a fixed order."""
    text = drop_non_text(text)
    text = drop_failure_sentences(text, failure_strings)
    text = drop_repeated_sentences(text)
    return drop_incomplete_end(text)
