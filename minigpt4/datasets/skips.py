"""Counting bad samples instead of crashing on them.

Every skip has a reason (one of ``REASONS``). A :class:`SkipCounter` lives next to one sample stream
(one DataLoader worker, or the main process); the loader drains it into each batch it yields, so the
totals the main process reports are exact whatever the number of worker processes.
"""
from __future__ import annotations

import logging
from collections import Counter

log = logging.getLogger(__name__)

MISSING_IMAGE = "missing_image"        # no .jpg/.jpeg/.png/.webp in the sample (or the file is gone)
MISSING_CAPTION = "missing_caption"    # neither json["caption"] nor a non-empty .txt
BAD_CAPTION = "bad_caption"            # the caption file is not UTF-8 text (never decoded with a guess)
BAD_IMAGE = "bad_image"                # undecodable or truncated image, or the processor failed on it
IMAGE_TOO_LARGE = "image_too_large"    # more pixels than max_image_pixels (checked before decoding)
BAD_SAMPLE = "bad_sample"              # a malformed tar member group (e.g. the same file name twice)
TRUNCATED_SHARD = "truncated_shard"    # a tar that ends early or breaks mid-way (its earlier samples are kept)
UNREADABLE_SHARD = "unreadable_shard"  # a shard that cannot be opened or is not a tar at all

# A sample cut short by a truncated shard is counted under what it lacks (e.g. missing_caption).
REASONS = (MISSING_IMAGE, MISSING_CAPTION, BAD_CAPTION, BAD_IMAGE, IMAGE_TOO_LARGE, BAD_SAMPLE, TRUNCATED_SHARD,
           UNREADABLE_SHARD)

# Per process and reason, the first few skips are logged with details; the rest only at DEBUG level.
_DETAILED_WARNINGS = 5
_warned: Counter = Counter()


def log_skip(name: str, reason: str, detail: str = "") -> None:
    _warned[reason] += 1
    level = logging.WARNING if _warned[reason] <= _DETAILED_WARNINGS else logging.DEBUG
    log.log(level, "%sskipped (%s)%s%s", f"{name}: " if name else "", reason, f": {detail}" if detail else "",
            " (further skips of this kind are logged at DEBUG level)" if _warned[reason] == _DETAILED_WARNINGS
            else "")


class SkipSample(Exception):
    """Raised by a sample loader to say: drop this sample, count it under ``reason``."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class SkipCounter:
    """Skips counted per reason since the last :meth:`take`.

    With ``keep_details=0`` each skip is logged where it happens; a DataLoader worker instead keeps
    the first ``keep_details`` descriptions per reason for the main process to log (workers are
    forked afresh every epoch, so their own rate limit would repeat the same lines).
    ``muted`` drops events: a resumed stream replays the samples it already delivered, and what was
    counted then is already in the restored totals.
    """

    def __init__(self, name: str = "", keep_details: int = 0):
        self.name = name
        self.pending: Counter = Counter()
        self.muted = False
        self.keep_details = keep_details
        self.details: list[tuple[str, str]] = []
        self._kept: Counter = Counter()
        self.last_good = -1  # stream index of the last delivered sample (to notice all-bad data)

    def add(self, reason: str, detail: str = "", n: int = 1) -> None:
        if self.muted:
            return
        self.pending[reason] += n
        if not self.keep_details:
            log_skip(self.name, reason, detail)
            return
        log.debug("%s: skipped (%s): %s", self.name, reason, detail)
        if self._kept[reason] < self.keep_details:
            self._kept[reason] += 1
            self.details.append((reason, detail))

    def handler(self, reason: str):
        """A webdataset exception handler that counts the failure under ``reason`` and continues."""
        return _CountingHandler(self, reason)

    def take(self) -> dict[str, int]:
        """The counts since the previous call (and reset them)."""
        out = dict(self.pending)
        self.pending.clear()
        return out

    def take_details(self) -> list[tuple[str, str]]:
        out, self.details = self.details, []
        return out


class _CountingHandler:
    def __init__(self, counter: SkipCounter, reason: str):
        self.counter = counter
        self.reason = reason

    def __call__(self, exn: Exception) -> bool:
        self.counter.add(self.reason, describe(exn))
        return True


def describe(exn: BaseException) -> str:
    """One line about a failure, with the sample's shard and key when webdataset attached them."""
    where = ":".join(str(getattr(exn, a)) for a in ("url", "key", "k") if getattr(exn, a, None) is not None)
    cause = exn.__cause__ or exn.__context__
    text = repr(exn) if cause is None or not where else repr(cause)
    return (f"{where}: {text}" if where else text)[:300]


def merge_counts(total: dict[str, int], delta: dict[str, int] | None) -> dict[str, int]:
    """Add ``delta`` into ``total`` in place (and return it)."""
    for reason, n in (delta or {}).items():
        total[reason] = total.get(reason, 0) + int(n)
    return total


def format_counts(counts: dict[str, int]) -> str:
    if not counts:
        return "none"
    return ", ".join(f"{reason}={n}" for reason, n in sorted(counts.items()))
