"""Streaming an answer: ``generate`` in a thread feeding transformers' ``TextIteratorStreamer``, and a
filter that turns the raw decoded pieces into exactly the text the finished answer will have.

The raw stream contains what the model produced before generation noticed a stop string (``###``
arrives as text before the stopping criterion fires) and may start with a space. :class:`StopFilter`
holds back any tail that could still become a stop string, and trailing whitespace, so the pieces it
releases always concatenate to a prefix of the final, stripped answer.

Closing the stream early (the consumer stops iterating, a Ctrl-C, a Restart in the demo) stops
``generate`` at its next token instead of letting it run to ``max_new_tokens`` in the background.
"""
from __future__ import annotations

import threading
from typing import Callable, Iterator

from transformers import TextIteratorStreamer

from minigpt4.models.prompting import cut_at_stop


class GenerationCancelled(Exception):
    """Raised inside ``generate`` (from the streamer) once the consumer has gone."""


class CancellableStreamer(TextIteratorStreamer):
    """A ``TextIteratorStreamer`` whose next ``put`` aborts ``generate`` after :meth:`cancel`."""

    cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def put(self, value) -> None:
        if self.cancelled:
            raise GenerationCancelled("the answer's reader stopped")
        super().put(value)


class StopFilter:
    def __init__(self, stop_strings: list[str]):
        self.stops = [s for s in stop_strings if s]
        self.text = ""
        self.emitted = 0
        self.done = False

    def _held_from(self, text: str) -> int:
        """Start of the longest tail of ``text`` that is a proper prefix of a stop string."""
        for start in range(max(0, len(text) - max((len(s) for s in self.stops), default=0)), len(text)):
            tail = text[start:]
            if any(s.startswith(tail) for s in self.stops):
                return start
        return len(text)

    def feed(self, piece: str) -> str:
        """Add raw text; return the newly releasable text ('' when nothing new is safe)."""
        if self.done:
            return ""
        self.text = (self.text + piece).lstrip()
        cut = cut_at_stop(self.text, self.stops)
        if len(cut) < len(self.text):
            self.done = True
            return self._release(cut.rstrip())
        return self._release(self.text[: self._held_from(self.text)].rstrip())

    def flush(self) -> str:
        """Release the rest at the end of generation."""
        out = self._release(cut_at_stop(self.text, self.stops).strip())
        self.done = True
        return out

    def _release(self, safe: str) -> str:
        out = safe[self.emitted:]
        self.emitted = max(self.emitted, len(safe))
        return out


def stream_generation(tokenizer, generate: Callable[..., object], stop_strings: list[str],
                      timeout: float | None = None) -> Iterator[str]:
    """Run ``generate(streamer=...)`` in a thread and yield filtered text pieces.

    The generator's return value (``StopIteration.value``) is what ``generate`` returned; an exception
    raised inside the thread is re-raised here.
    """
    streamer = CancellableStreamer(tokenizer, skip_prompt=True, timeout=timeout, skip_special_tokens=False)
    return (yield from stream_from(streamer, generate, stop_strings))


def stream_from(streamer: CancellableStreamer, generate: Callable[..., object],
                stop_strings: list[str]) -> Iterator[str]:
    """:func:`stream_generation` with a ready streamer (e.g. from ``MiniGPT4.text_streamer``)."""
    tokenizer = streamer.tokenizer
    result: dict = {}

    def run():
        try:
            result["value"] = generate(streamer=streamer)
        except BaseException as exc:  # noqa: BLE001 - handed over to the consumer
            result["error"] = exc
            streamer.end()

    thread = threading.Thread(target=run, name="minigpt4-generate", daemon=True)
    thread.start()
    filt = StopFilter(list(stop_strings) + ([tokenizer.eos_token] if tokenizer.eos_token else []))
    finished = False
    try:
        for raw in streamer:
            piece = filt.feed(raw)
            if piece:
                yield piece
        piece = filt.flush()
        finished = True
        if piece:
            yield piece
    finally:
        if not finished:
            streamer.cancel()  # generate stops at its next token
        thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")
