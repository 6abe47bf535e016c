"""Per-request generation settings and next-token selection for a batch whose rows have their own settings.

Greedy rows take the arg-max of the float32 logits (after the repetition penalty, when set), exactly as
transformers' ``generate`` does, so a row gets the same tokens in any batch. Sampling rows go through transformers' own warpers (temperature, the
LLM's default top-k, top-p) and draw from their own ``torch.Generator``: a seeded request draws the same
tokens whether it runs alone or next to others.
"""
from __future__ import annotations

import dataclasses

import torch
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """``temperature == 0`` means greedy decoding (then ``top_p`` and ``seed`` are ignored)."""
    max_new_tokens: int = 300
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None
    stop_strings: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()  # tokens that end the row besides EOS (not part of the text)
    repetition_penalty: float = 1.0  # transformers' penalty on the row's generated tokens (1 = none)

    def __post_init__(self):
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {self.top_k!r}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def needs_history(self) -> bool:
        """Token selection reads the row's generated ids (sampling warpers, repetition penalty)."""
        return not self.greedy or self.repetition_penalty != 1.0

    def penalties(self) -> LogitsProcessorList:
        out = LogitsProcessorList()
        if self.repetition_penalty != 1.0:
            out.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        return out

    def warpers(self) -> LogitsProcessorList:
        out = LogitsProcessorList()
        if self.temperature != 1.0:
            out.append(TemperatureLogitsWarper(self.temperature))
        if self.top_k:
            out.append(TopKLogitsWarper(self.top_k))
        if self.top_p < 1.0:
            out.append(TopPLogitsWarper(self.top_p))
        return out

    def generator(self, device) -> torch.Generator | None:
        """The row's own random stream (seeded when ``seed`` is set); None for greedy rows."""
        if self.greedy:
            return None
        gen = torch.Generator(device=device)
        if self.seed is not None:
            gen.manual_seed(self.seed)
        else:
            gen.seed()
        return gen


def select_tokens(logits: torch.Tensor, params: list[SamplingParams], generators: list,
                  histories: list | None = None) -> list[int]:
    """One next token per row from ``logits`` [B, V] (last position); ``histories[i]`` is row i's
    generated ids [1, T] (what transformers' warpers receive as ``input_ids``)."""
    logits = logits.float()
    out = logits.argmax(dim=-1).tolist()
    for i, p in enumerate(params):
        if not p.needs_history:
            continue
        ids = histories[i] if histories is not None and histories[i] is not None \
            else torch.zeros(1, 0, dtype=torch.long, device=logits.device)
        scores = p.penalties()(ids, logits[i : i + 1].clone())  # processors first, then warpers, as generate()
        if p.greedy:
            out[i] = int(scores.argmax(dim=-1)[0])
            continue
        scores = p.warpers()(ids, scores)
        probs = torch.softmax(scores, dim=-1)
        out[i] = int(torch.multinomial(probs, num_samples=1, generator=generators[i])[0, 0])
    return out
