"""The training loss without the work the padded layout wastes.

The faithful path runs the LLM on the right-padded ``[B, L]`` layout and its LM head on all ``B x L``
positions. Two exact shortcuts, each selectable in the model config:

* ``sequence_packing``: the rows' real tokens (attention 1) are concatenated with ``position_ids``
  restarting at 0 for every sample and no 2-D attention mask, which is transformers' padding-free path:
  its mask builder turns restarting positions into a block-diagonal causal mask, so no token attends
  across samples and each sample sees exactly the positions it has in the padded layout. By default the
  whole batch becomes one row (no pad token is computed; best with varlen kernels such as
  flash-attention). ``sequence_packing_row_tokens: N`` instead fills rows of ``max(N, longest sample)``
  tokens first-fit-decreasing: a few pad tokens at the rows' ends (their own block, after every real
  token, so causality keeps them out of the samples), but attention kernels that build a dense mask
  (SDPA on CPU) then work on rows x N^2 instead of (all tokens)^2.
* ``label_logits_only``: the decoder's hidden states are gathered at the positions whose next token is
  a label, and only those go through the LM head and cross-entropy, so neither time nor memory scales
  with (image + prompt tokens) x vocabulary.

The loss is normalised as transformers' causal-LM loss is: the mean over the batch's label tokens (the
``labels[:, 1:] != -100`` positions), so either path equals the faithful one on the same samples.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from minigpt4.models.prompting import IGNORE_INDEX

# Config keys of the LLM that change logits after the LM head; a model with one is refused for
# label_logits_only instead of giving a different loss.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale")


def at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision logits go through the cross-entropy in float32; float32/float64 ones as they are."""
    return logits.float() if logits.element_size() < 4 else logits


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """targets[:, t] = labels[:, t + 1] (the token position t predicts); the last position predicts nothing."""
    pad = torch.full_like(labels[:, :1], IGNORE_INDEX)
    return torch.cat([labels[:, 1:], pad], dim=1)


def pack_rows(inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor,
              row_tokens: int = 0):
    """Concatenate the attended tokens of the rows into packed rows.

    Rows must be right-padded (attention ones then zeros), as the training layout is. ``row_tokens`` 0
    gives one row of ``T = attention_mask.sum()`` tokens; ``N > 0`` fills rows of at most
    ``max(N, longest)`` tokens first-fit-decreasing, all as wide as the fullest one; a shorter row's tail
    is zero embeddings with their own restarting positions and ignored targets.
    Returns ``(embeds [R, W, H], position_ids [R, W], targets [R, W])``.
    """
    keep = attention_mask.bool()
    lengths = keep.sum(1)
    positions = torch.arange(keep.shape[1], device=keep.device).expand_as(keep)
    if bool((keep != (positions < lengths[:, None])).any()):
        raise ValueError("sequence packing needs right-padded rows (attention ones, then zeros)")
    if row_tokens <= 0:
        return (inputs_embeds[keep].unsqueeze(0), positions[keep].unsqueeze(0), targets[keep].unsqueeze(0))
    sizes = lengths.tolist()
    width = max(row_tokens, max(sizes))
    rows: list[list[int]] = []  # sample indices per row, first-fit-decreasing (ties keep batch order)
    free: list[int] = []
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        for r, room in enumerate(free):
            if sizes[i] <= room:
                rows[r].append(i)
                free[r] -= sizes[i]
                break
        else:
            rows.append([i])
            free.append(width - sizes[i])
    used = width - min(free)  # the fullest row: no row is wider than it needs to be
    free = [room - (width - used) for room in free]
    embeds, pos, tgt = [], [], []
    for members, room in zip(rows, free):
        n = [sizes[i] for i in members] + ([room] if room else [])
        embeds.append(torch.cat([inputs_embeds[i, : sizes[i]] for i in members]
                                + [inputs_embeds.new_zeros(room, inputs_embeds.shape[-1])]))
        pos.append(torch.cat([torch.arange(k, device=keep.device) for k in n]))
        tgt.append(torch.cat([targets[i, : sizes[i]] for i in members]
                             + [targets.new_full((room,), IGNORE_INDEX)]))
    return torch.stack(embeds), torch.stack(pos), torch.stack(tgt)


def check_label_logits_only(llm) -> None:
    config = getattr(llm, "config", None)
    for key in _LOGIT_TRANSFORMS:
        if getattr(config, key, None) not in (None, 1, 1.0):
            from minigpt4.common.config import ConfigError

            raise ConfigError(f"model.label_logits_only: the LLM applies {key}={getattr(config, key)!r} to its "
                              f"logits; set label_logits_only: false for this model")
    if llm.get_output_embeddings() is None or not hasattr(llm, "get_decoder"):
        from minigpt4.common.config import ConfigError

        raise ConfigError(f"model.label_logits_only: {type(llm).__name__} has no separate decoder and LM head; "
                          f"set label_logits_only: false for this model")


def causal_lm_loss(llm, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, *,
                   packing: bool, label_logits_only: bool, row_tokens: int = 0) -> torch.Tensor:
    """Mean cross-entropy over the label tokens (as ``llm(..., labels=labels).loss``), computed with the
    selected shortcuts."""
    targets = shifted_targets(labels)
    if packing:
        embeds, position_ids, targets = pack_rows(inputs_embeds, attention_mask, targets, row_tokens)
        kwargs = {"position_ids": position_ids, "attention_mask": None}
    else:
        embeds, kwargs = inputs_embeds, {"attention_mask": attention_mask}
    if not label_logits_only:
        logits = llm(inputs_embeds=embeds, use_cache=False, return_dict=True, **kwargs).logits
        return F.cross_entropy(at_least_float32(logits).flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
    hidden = llm.get_decoder()(inputs_embeds=embeds, use_cache=False, return_dict=True, **kwargs).last_hidden_state
    where = targets != IGNORE_INDEX
    logits = llm.get_output_embeddings()(hidden[where])
    return F.cross_entropy(at_least_float32(logits), targets[where])
