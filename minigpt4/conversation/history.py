"""Fitting a conversation into the context window by dropping whole turns, oldest first.

A *turn* starts at a user message that opens the conversation or follows an assistant message; it
holds that user message (and any further user messages, e.g. more uploaded images) plus the reply.
Dropping a turn drops its images too, so the system text, the BOS and every kept image's tokens are
never cut in the middle, unlike a plain left truncation of the embeddings.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable

from minigpt4.errors import UserError
from minigpt4.models.prompting import IMAGE_PLACEHOLDER

log = logging.getLogger(__name__)


class ContextTooLongError(UserError, ValueError):
    """Even the newest turn alone does not fit in ``max_length - max_new_tokens``."""


def turn_starts(messages: list, user_role: str) -> list[int]:
    """Indices where turns start (always 0 first when there are messages)."""
    starts = [0] if messages else []
    for i in range(1, len(messages)):
        if messages[i][0] == user_role and messages[i - 1][0] != user_role:
            starts.append(i)
    return starts


def count_images(messages: list) -> int:
    return sum((msg or "").count(IMAGE_PLACEHOLDER) for _, msg in messages)


def fit_turns(conv, img_list: list, measure: Callable[[str, int], int], budget: int):
    """The longest suffix of whole turns whose context fits in ``budget`` positions.

    ``measure(prompt, num_images)`` returns the context length (tokens + image positions, BOS included).
    Returns ``(view, images, dropped_turns)``: ``view`` is a shallow copy of ``conv`` with the kept
    messages, ``images`` the matching tail of ``img_list``. Raises :class:`ContextTooLongError` when even
    the newest turn does not fit.
    """
    if budget <= 0:
        raise ContextTooLongError(f"no room for a prompt: max_length - max_new_tokens = {budget}")
    starts = turn_starts(conv.messages, conv.roles[0]) or [0]
    needed = None
    for dropped, start in enumerate(starts):
        kept = conv.messages[start:]
        images = img_list[count_images(conv.messages[:start]):]
        view = dataclasses.replace(conv, messages=kept)
        needed = measure(view.get_prompt(), len(images))
        if needed <= budget:
            if dropped:
                log.warning("context: dropped the %d oldest turn(s) to fit %d positions (max_length - "
                            "max_new_tokens); %d image(s) left", dropped, budget, len(images))
            return view, images, dropped
    raise ContextTooLongError(
        f"the newest turn alone needs {needed} context positions but only {budget} are available "
        f"(max_length - max_new_tokens); raise max_length, lower max_new_tokens, or send fewer images/shorter text")
