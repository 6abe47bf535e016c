"""The training loss without the work the padded layout wastes.

The faithful path runs the LLM on the right-padded ``[B, L]`` layout and its LM head on all ``B x L``
positions. Two exact shortcuts, each selectable in the model config:

* ``sequence_packing``: the rows' real tokens (attention 1) are concatenated into one row with
  ``position_ids`` restarting at 0 for every sample and no 2-D attention mask, which is transformers'
  padding-free path: its mask builder turns restarting positions into a block-diagonal causal mask, so
  no token attends across samples and each sample sees exactly the positions it has in the padded
  layout. Pad tokens are never computed.
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


def pack_rows(inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor):
    """Concatenate the attended tokens of every row into one row.

    Rows must be right-padded (attention ones then zeros), as the training layout is. Returns
    ``(embeds [1, T, H], position_ids [1, T], targets [1, T])`` with ``T = attention_mask.sum()``.
    """
    keep = attention_mask.bool()
    lengths = keep.sum(1)
    positions = torch.arange(keep.shape[1], device=keep.device).expand_as(keep)
    if bool((keep != (positions < lengths[:, None])).any()):
        raise ValueError("sequence packing needs right-padded rows (attention ones, then zeros)")
    return (inputs_embeds[keep].unsqueeze(0), positions[keep].unsqueeze(0), targets[keep].unsqueeze(0))


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
                   packing: bool, label_logits_only: bool) -> torch.Tensor:
    """Mean cross-entropy over the label tokens (as ``llm(..., labels=labels).loss``), computed with the
    selected shortcuts."""
    targets = shifted_targets(labels)
    if packing:
        embeds, position_ids, targets = pack_rows(inputs_embeds, attention_mask, targets)
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
