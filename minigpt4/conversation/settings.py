"""Generation settings checked where they enter (``Chat``, the chat CLI, the demo), with the option named."""
from __future__ import annotations

import math

from minigpt4.errors import UserError


# What torch.manual_seed and torch.Generator.manual_seed accept (a negative seed is taken modulo 2**64).
SEED_MIN, SEED_MAX = -0x8000_0000_0000_0000, 0xFFFF_FFFF_FFFF_FFFF


class GenerationSettingsError(UserError, ValueError):
    """A generation setting out of range; the message names the option (a flag on the command line)."""


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_generation_settings(*, num_beams=1, max_new_tokens=300, top_p=0.9, temperature=1.0, max_length=None,
                              seed=None, names: dict | None = None) -> None:
    """``num_beams >= 1``, ``max_new_tokens >= 1``, ``0 < top_p <= 1``, ``temperature > 0`` and, when given,
    ``max_length > max_new_tokens`` and ``SEED_MIN <= seed <= SEED_MAX``. ``names`` maps a setting to how the
    user spelled it (e.g. a flag)."""
    names = names or {}

    def refuse(key, rule, value):
        raise GenerationSettingsError(f"{names.get(key, key)} must be {rule}, got {value!r}")

    for key, value in (("num_beams", num_beams), ("max_new_tokens", max_new_tokens)):
        if not (isinstance(value, int) and not isinstance(value, bool)) or value < 1:
            refuse(key, "a whole number >= 1", value)
    if not _number(top_p) or not 0 < top_p <= 1:
        refuse("top_p", "in (0, 1]", top_p)
    if not _number(temperature) or temperature <= 0:
        refuse("temperature", "> 0", temperature)
    if max_length is not None:
        if not (isinstance(max_length, int) and not isinstance(max_length, bool)) or max_length <= max_new_tokens:
            refuse("max_length", f"a whole number greater than {names.get('max_new_tokens', 'max_new_tokens')} "
                                 f"({max_new_tokens}): it holds the context and the answer", max_length)
    if seed is not None and (not (isinstance(seed, int) and not isinstance(seed, bool))
                             or not SEED_MIN <= seed <= SEED_MAX):
        refuse("seed", f"a whole number in {SEED_MIN}..{SEED_MAX} (what torch.manual_seed accepts)", seed)
