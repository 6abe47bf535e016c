"""Deterministic seeds for data streams and per-sample augmentation.

A sample's random crop depends only on (run seed, where the sample sits in its stream), never on
how many samples were drawn before in the process. That is what makes a resumed run, and a run with
a different number of DataLoader workers for map-style data, produce bitwise-identical batches.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager

import torch


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers; stable across processes and Python versions (no ``hash()``)."""
    text = ",".join(str(int(p)) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


@contextmanager
def cpu_rng_scope(seed: int):
    """Run the body with torch's CPU generator seeded to ``seed``, then restore the caller's state.

    Only the CPU generator is touched (``torch.manual_seed`` would also reseed CUDA generators),
    so processing samples in the main process leaves the training RNG untouched.
    """
    gen = torch.default_generator
    saved = gen.get_state()
    gen.manual_seed(seed)
    try:
        yield
    finally:
        gen.set_state(saved)
