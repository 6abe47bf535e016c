"""A cache of frozen vision-tower outputs keyed by the exact bytes of the processed image.

The tower's output does not depend on the LLM, so an image seen again (another epoch, another stage with
the same images) need not pass through the ViT and Q-Former again. Keys are hashes of the pixel tensor
itself, so the cache can never return features of a different input: with a random augmentation every
view is a new key (a miss), with a deterministic processor every repeat is a hit.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch


def pixel_key(pixels: torch.Tensor) -> bytes:
    data = pixels.detach().contiguous().cpu().numpy().tobytes()
    return hashlib.blake2b(data, digest_size=16).digest() + str(tuple(pixels.shape)).encode()


class FeatureCache:
    """LRU map from pixel bytes to features (kept on CPU); ``max_items`` bounds memory."""

    def __init__(self, max_items: int):
        self.max_items = max_items
        self.store: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self.store)

    def features(self, pixels: torch.Tensor, compute) -> torch.Tensor:
        """Features for a batch ``pixels`` [B, ...]; ``compute`` runs the tower on the rows not cached."""
        keys = [pixel_key(row) for row in pixels]
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        slot = {i: j for j, i in enumerate(missing)}
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh = compute(pixels[missing]) if missing else None
        out_device = fresh.device if fresh is not None else pixels.device
        rows = []
        for i, key in enumerate(keys):
            if i in slot:
                row = fresh[slot[i]]
                self._put(key, row)
            else:
                row = self.store[key]
                self.store.move_to_end(key)
            rows.append(row.to(out_device))
        return torch.stack(rows)

    def _put(self, key: bytes, row: torch.Tensor) -> None:
        self.store[key] = row.detach().to("cpu", copy=True)
        while len(self.store) > self.max_items:
            self.store.popitem(last=False)
