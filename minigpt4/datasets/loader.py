"""The training loader: one DataLoader per dataset, each whole batch drawn from one of them with
probability ``sample_ratio / sum`` (as the original's MultiIterLoader), infinite, resumable.

Determinism: the dataset of step ``t`` is a function of (seed, rank, t); a map-style batch is a
function of (seed, epoch, batch number) and a webdataset batch of (seed, rank, stream, position);
augmentation is seeded per sample. ``state_dict()`` records positions of what was *consumed* (not
what workers prefetched), so a restored loader yields exactly the batches an uninterrupted one
would have. Skip counts travel inside the packets workers send, so they are exact.

Cost of resuming: a map-style dataset starts at its saved (epoch, batch) directly; a webdataset
stream re-reads, without decoding, the raw samples it had consumed (the shuffle buffer's content
depends on them), i.e. a few GB of tar per worker after a long stage-1 run. Resuming needs the same
seed, rank, world size and ``num_workers``; anything else is refused with the reason.
"""
from __future__ import annotations

import bisect
import logging

import numpy as np

from minigpt4.datasets import skips
from minigpt4.datasets.sources import MapSource, WebSource
from minigpt4.datasets.webdata import WebImageTextDataset
from minigpt4.errors import ConfigError

log = logging.getLogger(__name__)

STATE_FORMAT = 1


class TrainLoader:
    """Infinite iterator of collated batches; see the module docstring."""

    def __init__(self, datasets: dict, *, batch_size: int, num_workers: int, seed: int, rank: int = 0,
                 world_size: int = 1, pin_memory: bool = False, log_every: int = 1000):
        if not datasets:
            raise ValueError("build_train_loader: no dataset given")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.log_every = log_every
        self.names = list(datasets)
        self._skips: dict[str, int] = {}
        self._logged: dict[str, int] = {}
        self.sources, ratios = [], []
        for name, ds in datasets.items():
            if isinstance(ds, dict):  # accept {name: {"train": ds}} as task.build_datasets returns
                ds = ds["train"]
            bs = getattr(ds, "batch_size", None) or batch_size
            nw = getattr(ds, "num_workers", None)
            nw = num_workers if nw is None else nw
            kwargs = dict(name=name, batch_size=bs, num_workers=nw, seed=self.seed, rank=self.rank,
                          world_size=self.world_size, on_skips=self._add_skips, pin_memory=pin_memory)
            source = WebSource(ds, **kwargs) if isinstance(ds, WebImageTextDataset) else MapSource(ds, **kwargs)
            self.sources.append(source)
            ratio = float(getattr(ds, "sample_ratio", 1) or 0)
            if ratio <= 0:
                raise ConfigError(f"datasets.{name}.sample_ratio must be > 0, got {ratio}")
            ratios.append(ratio)
            skips.merge_counts(self._skips, getattr(ds, "build_skips", None))
        self.ratios = ratios
        self._cumulative = list(np.cumsum(ratios) / sum(ratios))
        self.step = 0

    # ------------------------------------------------------------------ iteration
    def choose(self, step: int) -> int:
        """Index of the dataset that supplies batch ``step`` (same for every run with this seed/rank)."""
        if len(self.sources) == 1:
            return 0
        u = np.random.default_rng([self.seed, self.rank, step]).random()
        return min(bisect.bisect_right(self._cumulative, u), len(self.sources) - 1)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = self.sources[self.choose(self.step)].next_batch()
        self.step += 1
        if self.log_every and self.step % self.log_every == 0 and self._skips != self._logged:
            log.warning("data: skipped so far: %s", skips.format_counts(self._skips))
            self._logged = dict(self._skips)
        return batch

    def _add_skips(self, name: str, delta: dict, details=()) -> None:
        skips.merge_counts(self._skips, delta)
        for reason, detail in details:
            skips.log_skip(name, reason, detail)

    def skip_counts(self) -> dict[str, int]:
        return dict(self._skips)

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        return {"format": STATE_FORMAT, "step": self.step, "seed": self.seed, "rank": self.rank,
                "world_size": self.world_size, "skips": dict(self._skips),
                "sources": {name: src.state_dict() for name, src in zip(self.names, self.sources)}}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "rank", "world_size"):
            if state.get(key) != getattr(self, key):
                raise ConfigError(f"data state was saved with {key}={state.get(key)}, this loader has "
                                  f"{key}={getattr(self, key)}; the batch stream cannot continue exactly")
        if sorted(state["sources"]) != sorted(self.names):
            raise ConfigError(f"data state holds datasets {sorted(state['sources'])}, config has {sorted(self.names)}")
        for name, src in zip(self.names, self.sources):
            src.load_state_dict(state["sources"][name])
        self.step = int(state["step"])
        self._skips = dict(state["skips"])

    def close(self) -> None:
        for src in self.sources:
            src.close()
        level = logging.WARNING if self._skips else logging.INFO
        log.log(level, "data: %d batches, skipped samples: %s", self.step, skips.format_counts(self._skips))


def build_train_loader(datasets: dict, *, batch_size: int, num_workers: int, seed: int, rank: int = 0,
                       world_size: int = 1, pin_memory: bool = False) -> TrainLoader:
    """``datasets``: name -> train dataset (with ``.sample_ratio``), or name -> {"train": dataset}."""
    return TrainLoader(datasets, batch_size=batch_size, num_workers=num_workers, seed=seed, rank=rank,
                       world_size=world_size, pin_memory=pin_memory)
