"""Turning one row's growing token list into streamed text pieces and a stop decision.

Each new token re-decodes the row (``skip_special_tokens=False``, as :meth:`MiniGPT4.decode`), so the
pieces follow the tokenizer's own joining rules; a piece is held back while the text ends in an
incomplete character. :class:`~minigpt4.conversation.streaming.StopFilter` holds back anything that
could still become a stop string, so the released pieces always concatenate to a prefix of the final
answer, which :meth:`RowText.finish` completes with ``model.decode``'s text.
"""
from __future__ import annotations

import logging

from minigpt4.conversation.streaming import StopFilter

log = logging.getLogger(__name__)


class RowText:
    def __init__(self, model, stop_strings):
        self.model = model
        self.stops = [s for s in stop_strings if s]
        eos = model.eos_text
        self.filter = StopFilter(self.stops + ([eos] if eos else []))
        self.ids: list[int] = []
        self.raw = ""
        self.emitted = ""

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add a generated (non-EOS) token; returns (new text to send, whether a stop string appeared)."""
        self.ids.append(int(token_id))
        raw = self.model.decode_text(self.ids)
        if raw.endswith("\ufffd") or not raw.startswith(self.raw):
            return "", self._stopped(raw)  # an incomplete character, or the tokenizer re-joined the text
        piece = self.filter.feed(raw[len(self.raw):])
        self.raw = raw
        self.emitted += piece
        return piece, self.filter.done

    def _stopped(self, raw: str) -> bool:
        return any(s in raw for s in self.stops)

    def finish(self) -> tuple[str, str]:
        """(the answer's final text, the part of it not streamed yet)."""
        text = self.model.decode(self.ids, stop_strings=self.stops)
        if not text.startswith(self.emitted):
            log.warning("streamed text %r is not a prefix of the final answer %r", self.emitted, text)
            return text, ""
        rest = text[len(self.emitted):]
        self.emitted = text
        return text, rest
