"""Alignment losses between projected image features and fixed text embeddings.

``z`` is the projection head's output for this rank's images, ``t`` the (fixed, no-gradient) text embedding
of each image's own description; both are L2-normalised here.

``clip``  symmetric InfoNCE over the GLOBAL batch: z and t are gathered from every rank (gradient kept for
          this rank's rows of z), logits = z t^T / tau, the positive of row i is column i (offset by the rows
          of earlier ranks), loss = (CE(logits) + CE(logits^T)) / 2 averaged over the global batch.
          Every rank computes the same value; its gradient w.r.t. its own rows equals the single-process
          gradient of the whole batch w.r.t. those rows.
``ctr``   one direction (image -> text), this rank's batch only.
``byol``  2 - 2 cos(z, t) averaged over this rank's batch (no negatives).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn import functional as F

from minigpt4.errors import ConfigError

ALIGN_LOSSES = ("clip", "ctr", "byol")


def _is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_local_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate ``x`` from every rank along dim 0 (ranks may hold different row counts; a rank's batch
    can shrink when samples are skipped). Only this rank's rows carry gradient.
    Returns (gathered, index of this rank's first row)."""
    if not _is_dist():
        return x, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x.detach()
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    pieces = [p[:s] for p, s in zip(parts, sizes)]
    pieces[rank] = x  # the local shard keeps its autograd history
    return torch.cat(pieces, dim=0), sum(sizes[:rank])


def clip_loss(z: torch.Tensor, t: torch.Tensor, tau: float) -> torch.Tensor:
    z, t = F.normalize(z, dim=-1), F.normalize(t, dim=-1)
    z_all, offset = gather_with_local_grad(z)
    t_all, _ = gather_with_local_grad(t.detach())
    logits = z_all @ t_all.t() / tau
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def ctr_loss(z: torch.Tensor, t: torch.Tensor, tau: float) -> torch.Tensor:
    z, t = F.normalize(z, dim=-1), F.normalize(t.detach(), dim=-1)
    logits = z @ t.t() / tau
    return F.cross_entropy(logits, torch.arange(z.shape[0], device=z.device))


def byol_loss(z: torch.Tensor, t: torch.Tensor, tau: float | None = None) -> torch.Tensor:
    z, t = F.normalize(z, dim=-1), F.normalize(t.detach(), dim=-1)
    return (2 - 2 * (z * t).sum(dim=-1)).mean()


def alignment_loss(kind: str, z: torch.Tensor, t: torch.Tensor, tau: float) -> torch.Tensor:
    fn = {"clip": clip_loss, "ctr": ctr_loss, "byol": byol_loss}.get(kind)
    if fn is None:
        raise ConfigError(f"model.align_loss must be one of {list(ALIGN_LOSSES)}, got {kind!r}")
    return fn(z.float(), t.float(), tau)


def is_global(kind: str) -> bool:
    """True for a loss whose value is already the whole global batch's on every rank (``clip``)."""
    return kind == "clip"
