"""Alignment losses against an independent, loop-based implementation of the formulas, and the global-batch
``clip`` loss over 2 gloo ranks against 1 process holding the whole batch (value and gradients)."""
from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from minigpt4.gpt4image import losses


def _unit(v):
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def reference_clip(z, t, tau):
    """Symmetric InfoNCE written out element by element (plain Python floats)."""
    z = [_unit(r) for r in z.tolist()]
    t = [_unit(r) for r in t.tolist()]
    n = len(z)
    s = [[sum(a * b for a, b in zip(z[i], t[j])) / tau for j in range(n)] for i in range(n)]
    img_to_txt = sum(-(s[i][i] - math.log(sum(math.exp(s[i][j]) for j in range(n)))) for i in range(n)) / n
    txt_to_img = sum(-(s[j][j] - math.log(sum(math.exp(s[i][j]) for i in range(n)))) for j in range(n)) / n
    return img_to_txt, txt_to_img


def test_clip_loss_matches_the_formula_in_both_directions():
    g = torch.Generator().manual_seed(0)
    z, t = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    i2t, t2i = reference_clip(z, t, 0.2)
    assert abs(i2t - t2i) > 1e-3  # the two directions differ on random data, so both are checked
    assert losses.clip_loss(z, t, 0.2).item() == pytest.approx((i2t + t2i) / 2, abs=1e-9)
    assert losses.ctr_loss(z, t, 0.2).item() == pytest.approx(i2t, abs=1e-9)
    # swapping roles swaps the directions: the loss is symmetric in (z, t)
    assert losses.clip_loss(t, z, 0.2).item() == pytest.approx((i2t + t2i) / 2, abs=1e-9)


def test_byol_loss_is_two_minus_two_cosine():
    g = torch.Generator().manual_seed(1)
    z, t = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    expected = sum(2 - 2 * sum(a * b for a, b in zip(_unit(zr), _unit(tr))) for zr, tr in zip(z.tolist(), t.tolist()))
    assert losses.byol_loss(z, t).item() == pytest.approx(expected / 4, abs=1e-9)
    assert losses.byol_loss(z, z).item() == pytest.approx(0.0, abs=1e-9)


def test_text_side_gets_no_gradient_and_unknown_kind_is_refused():
    z = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)
    losses.alignment_loss("clip", z, t, 0.1).backward()
    assert z.grad is not None and t.grad is None
    with pytest.raises(ValueError, match="model.align_loss"):
        losses.alignment_loss("triplet", z, t, 0.1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world, port, z, t, cases, tau, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = []
        for sizes in cases:
            start = sum(sizes[:rank])
            n = sum(sizes)
            mine = z[:n][start:start + sizes[rank]].clone().requires_grad_(True)
            loss = losses.clip_loss(mine, t[:n][start:start + sizes[rank]], tau)
            loss.backward()
            results.append((loss.detach(), mine.grad.detach()))
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_clip_loss_over_two_ranks_equals_one_process_with_the_whole_batch(tmp_path):
    """Equal and unequal shards (a rank's batch shrinks when samples are skipped)."""
    cases = [(4, 4), (3, 5)]
    g = torch.Generator().manual_seed(2)
    z, t = torch.randn(8, 8, generator=g, dtype=torch.float64), torch.randn(8, 8, generator=g, dtype=torch.float64)
    ctx = mp.get_context("spawn")  # not fork: a child forked after torch started its thread pool can hang
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, 2, port, z, t, cases, 0.05, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        if p.is_alive():
            p.kill()
        assert p.exitcode == 0
    per_rank = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for c, sizes in enumerate(cases):
        whole = z[:sum(sizes)].clone().requires_grad_(True)
        single = losses.clip_loss(whole, t[:sum(sizes)], 0.05)
        single.backward()
        for rank in range(2):
            loss, grad = per_rank[rank][c]
            start = sum(sizes[:rank])
            assert abs(loss.item() - single.item()) < 1e-6
            assert torch.allclose(grad, whole.grad[start:start + sizes[rank]], atol=1e-6, rtol=0)
        assert whole.grad.abs().max() > 1e-3  # a real gradient was compared
