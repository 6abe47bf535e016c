"""A running batch of left-padded rows sharing one KV cache, which rows can join and leave at any step.

``prefill`` runs the LLM on the new rows' context embeddings (left-padded among themselves, position ids
from the attention mask as in transformers' ``generate``), then ``merge`` pads either cache on the left so
the new rows join the running ones. ``step`` feeds every row's last token; ``keep`` drops finished rows
and the left columns no remaining row attends to. Padding columns are masked out, so a row's logits do
not depend on which rows share its batch.
"""
from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    extra = width - t.shape[dim]
    if extra <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _layers(cache: DynamicCache):
    return [layer for layer in cache.layers if layer.is_initialized]


class KVBatch:
    def __init__(self, model):
        self.model = model
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # [B, L] 1 where a row attends
        self.last: torch.Tensor | None = None  # [B] token each row feeds next
        self.positions: torch.Tensor | None = None  # [B] position id of that token

    def __len__(self) -> int:
        return 0 if self.mask is None else self.mask.shape[0]

    def _forward(self, cache, **kwargs):
        llm = self.model.llama_model
        params = inspect.signature(llm.forward).parameters
        kwargs["cache" if "cache" in params else "past_key_values"] = cache  # renamed in recent transformers
        if "logits_to_keep" in params:
            kwargs["logits_to_keep"] = 1  # as generate(): the LM head on the last position only
        with self.model.maybe_autocast():
            out = llm(use_cache=True, return_dict=True, **kwargs)
        return out.logits[:, -1].to(dtype=torch.float32)

    def prefill(self, embeds: torch.Tensor, attention: torch.Tensor) -> tuple[torch.Tensor, "KVBatch"]:
        """Run new rows' contexts; returns (last-position logits [N, V], a batch holding only them)."""
        positions = (attention.long().cumsum(-1) - 1).masked_fill(attention == 0, 0)
        cache = DynamicCache()
        logits = self._forward(cache, inputs_embeds=embeds, attention_mask=attention, position_ids=positions)
        new = KVBatch(self.model)
        new.cache, new.mask, new.positions = cache, attention, positions[:, -1]
        return logits, new

    def set_last(self, tokens: list[int]) -> None:
        self.last = torch.tensor(tokens, dtype=torch.long, device=self.mask.device)
        self.positions = self.positions + 1

    def merge(self, other: "KVBatch") -> None:
        """Append ``other``'s rows (after this batch's rows)."""
        if not len(self):
            self.cache, self.mask, self.last, self.positions = other.cache, other.mask, other.last, other.positions
            return
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(_layers(self.cache), _layers(other.cache)):
            mine.keys = torch.cat([_pad_left(mine.keys, width, 2), _pad_left(theirs.keys, width, 2)])
            mine.values = torch.cat([_pad_left(mine.values, width, 2), _pad_left(theirs.values, width, 2)])
        self.mask = torch.cat([_pad_left(self.mask, width, 1), _pad_left(other.mask, width, 1)])
        self.last = torch.cat([self.last, other.last])
        self.positions = torch.cat([self.positions, other.positions])

    def step(self) -> torch.Tensor:
        """Feed every row's last token; returns next-token logits [B, V]."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self), 1)], dim=1)
        return self._forward(self.cache, input_ids=self.last[:, None], attention_mask=self.mask,
                             position_ids=self.positions[:, None])

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (indices into the batch), then trim columns nobody attends to."""
        if not rows:
            self.cache = self.mask = self.last = self.positions = None
            return
        if len(rows) == len(self):
            return
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        self.mask, self.last, self.positions = self.mask[index], self.last[index], self.positions[index]
        used = self.mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        self.mask = self.mask[:, start:]
        for layer in _layers(self.cache):
            layer.keys = layer.keys[index, :, start:]
            layer.values = layer.values[index, :, start:]
