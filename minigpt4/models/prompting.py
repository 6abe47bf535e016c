"""Pure functions for the fiddly part: prompts with ``<ImageHere>``, sequence layout, masks and labels.

A *layout* is a LongTensor of token ids where ``IMAGE_MARKER`` (-1) marks the positions that receive
image embeddings. Training and generation build layouts from token ids only; :func:`embed_layout`
then turns a layout into ``inputs_embeds`` in one vectorised step.

Training layout of row i (the original's, byte for byte)::

    [bos] + wrapped_i + answer_i + answer pads + prompt pads
    wrapped_i = seg_0 + [img] * n + seg_1 (+ [img] * n + seg_2 ...)

Pads are ``pad_id`` tokens with attention 0; labels are -100 everywhere except on ``answer_i``, where
ids equal to ``pad_id`` are masked too (the original masks by id). Generation layouts are left-padded.
"""
from __future__ import annotations

from pathlib import Path

import torch

from minigpt4.errors import InvalidFile, read_text_file

IMAGE_PLACEHOLDER = "<ImageHere>"
IMAGE_MARKER = -1
IGNORE_INDEX = -100


def load_prompt_list(prompt_path: str | Path, prompt_template: str = "{}") -> list[str]:
    """Lines of ``prompt_path`` that contain ``<ImageHere>`` (once), each formatted into ``prompt_template``."""
    lines = read_text_file(prompt_path, "model.prompt_path").splitlines()
    for number, line in enumerate(lines, 1):
        if line.count(IMAGE_PLACEHOLDER) > 1:
            raise InvalidFile(f"model.prompt_path {prompt_path}, line {number}: {line.count(IMAGE_PLACEHOLDER)} "
                              f"{IMAGE_PLACEHOLDER} in one instruction; each line holds one image")
    prompts = [prompt_template.format(line) for line in lines if IMAGE_PLACEHOLDER in line]
    if not prompts:
        raise InvalidFile(f"{prompt_path}: no line contains {IMAGE_PLACEHOLDER}")
    return prompts


def split_prompt(prompt: str | None, num_images: int = 1) -> list[str]:
    """Split on ``<ImageHere>``; ``None`` means no text at all around the image(s) (stage 1)."""
    if prompt is None:
        return [""] * (num_images + 1)
    segments = prompt.split(IMAGE_PLACEHOLDER)
    if len(segments) != num_images + 1:
        raise ValueError(f"prompt has {len(segments) - 1} {IMAGE_PLACEHOLDER} for {num_images} image(s): {prompt!r}")
    return segments


def wrap_ids(segment_ids: list[list[int]], num_tokens: int) -> list[int]:
    """seg_0 + [marker]*num_tokens + seg_1 + ... for one row."""
    out = list(segment_ids[0])
    for seg in segment_ids[1:]:
        out += [IMAGE_MARKER] * num_tokens + list(seg)
    return out


def training_layout(wrapped: list[list[int]], answers: list[list[int]], bos_id: int | None,
                    pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (layout ids, attention mask, labels), each [B, L], for the training forward."""
    bos = [] if bos_id is None else [bos_id]
    w_max = max(len(w) for w in wrapped)
    a_max = max(len(a) for a in answers)
    ids, att, lab = [], [], []
    for w, a in zip(wrapped, answers):
        pads = (a_max - len(a)) + (w_max - len(w))
        ids.append(bos + w + a + [pad_id] * pads)
        att.append([1] * (len(bos) + len(w) + len(a)) + [0] * pads)
        lab.append([IGNORE_INDEX] * (len(bos) + len(w)) + [IGNORE_INDEX if t == pad_id else t for t in a]
                   + [IGNORE_INDEX] * pads)
    return torch.tensor(ids), torch.tensor(att), torch.tensor(lab)


def generation_layout(contexts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad already wrapped contexts (bos included by the caller) -> (layout ids, attention)."""
    width = max(len(c) for c in contexts)
    ids = [[pad_id] * (width - len(c)) + list(c) for c in contexts]
    att = [[0] * (width - len(c)) + [1] * len(c) for c in contexts]
    return torch.tensor(ids), torch.tensor(att)


def embed_layout(layout: torch.Tensor, image_embeds: torch.Tensor, embed_tokens) -> torch.Tensor:
    """Token embeddings for the layout with ``image_embeds`` ([B, n, H] or [N, H], in row-major order of
    the markers) written into the marker positions."""
    marker = layout == IMAGE_MARKER
    embeds = embed_tokens(layout.clamp(min=0))
    n_marked = int(marker.sum())
    flat = image_embeds.reshape(-1, embeds.shape[-1])
    if flat.shape[0] != n_marked:
        raise ValueError(f"layout has {n_marked} image positions but {flat.shape[0]} image embeddings were given")
    return embeds.masked_scatter(marker.unsqueeze(-1), flat.to(embeds.dtype))


def cut_at_stop(text: str, stop_strings: list[str]) -> str:
    """Text up to the first occurrence of any stop string."""
    cut = len(text)
    for stop in stop_strings:
        if stop:
            pos = text.find(stop)
            if pos != -1:
                cut = min(cut, pos)
    return text[:cut]
