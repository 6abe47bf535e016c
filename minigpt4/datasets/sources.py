"""Main-process sides of the training loader, one per dataset: a DataLoader plus the position of
what has been consumed from it. Workers send packets ``{"batch", "skips", ...}``; ``batch`` is None
when every sample of a planned batch was skipped (map-style) or at the end of a stream (epoch mode).
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, default_collate, get_worker_info

from minigpt4.datasets import skips
from minigpt4.datasets.seeding import cpu_rng_scope, mix_seed
from minigpt4.datasets.webdata import WebImageTextDataset
from minigpt4.errors import ConfigError

log = logging.getLogger(__name__)

# Descriptions of skipped samples a worker sends along per reason and packet, for the main process to log.
KEEP_DETAILS = 2


def _identity(packet):
    return packet


def _private_generator() -> torch.Generator:
    """For the DataLoader's own seed draw, which would otherwise advance the training process's global
    RNG at a moment that differs between an uninterrupted and a resumed run. (Sample randomness is
    seeded per sample and does not use it.)"""
    g = torch.Generator()
    g.manual_seed(0)
    return g


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _ignore_stop_signals(worker_id: int) -> None:
    """Worker start: SIGTERM and Ctrl-C are the training process's business.

    torchrun and cluster schedulers signal a rank's whole process group, and a terminal sends Ctrl-C to
    the foreground group, so workers get the stop signal too; torch's worker loop dies on a SIGTERM that
    does not come from its parent and exits on SIGINT, which breaks the step the training process is in.
    Ignoring them lets the training process finish its step, checkpoint and shut its workers down itself
    (:func:`_shutdown`); a worker whose parent is gone still exits on its own (torch's watchdog).
    """
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


@contextlib.contextmanager
def _stop_signals_blocked():
    """Hold SIGTERM/SIGINT back while workers are forked, so none arrives in a worker before
    :func:`_ignore_stop_signals` ran (the training process gets it, late by the fork's duration)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _start_loader(loader: DataLoader):
    if loader.num_workers == 0:
        return iter(loader)
    with _stop_signals_blocked():
        return iter(loader)


def _shutdown(it) -> None:
    """Stop a DataLoader iterator's workers; the ones that ignore the polite SIGTERM are killed."""
    if it is None or not hasattr(it, "_shutdown_workers"):
        return
    it._shutdown_workers()
    for worker in getattr(it, "_workers", ()):
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=5)


class _Source:
    """What both kinds of source share: their settings, and the DataLoader iterator they start and close."""

    def __init__(self, dataset, *, name, batch_size, num_workers, seed, rank, world_size, on_skips, pin_memory=False):
        self.name, self.dataset, self.batch_size, self.num_workers = name, dataset, batch_size, num_workers
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.on_skips, self.pin_memory = on_skips, pin_memory
        self._it = None

    def _open(self, dataset, **kwargs) -> None:
        self._it = _start_loader(DataLoader(dataset, batch_size=None, num_workers=self.num_workers,
                                            collate_fn=_identity, pin_memory=self.pin_memory,
                                            generator=_private_generator(), worker_init_fn=_ignore_stop_signals,
                                            **kwargs))

    def close(self) -> None:
        it, self._it = self._it, None
        _shutdown(it)


class _WebStream(IterableDataset):
    """Runs in each DataLoader worker: the worker's stream of one webdataset, batched into packets
    ``{"batch", "stream", "position", "skips", "end"}``. Worker ``p`` reads logical stream
    ``(p + rotation) % num_streams`` so a restarted DataLoader continues the round-robin where the
    consumer stopped."""

    def __init__(self, dataset: WebImageTextDataset, *, batch_size, rank, world_size, num_streams, epoch,
                 seed, rotation, positions, finished):
        super().__init__()
        self.dataset, self.batch_size = dataset, batch_size
        self.rank, self.world_size, self.num_streams = rank, world_size, num_streams
        self.epoch, self.seed, self.rotation = epoch, seed, rotation
        self.positions, self.finished = list(positions), set(finished)

    def __iter__(self):
        info = get_worker_info()
        stream = ((info.id if info is not None else 0) + self.rotation) % self.num_streams
        if stream in self.finished:
            return
        counter = skips.SkipCounter(self.dataset.name, keep_details=KEEP_DETAILS)
        start = self.positions[stream]
        samples = []
        for index, sample in self.dataset.stream(rank=self.rank, world_size=self.world_size, worker=stream,
                                                 num_workers=self.num_streams, epoch=self.epoch, seed=self.seed,
                                                 skip=start, counter=counter):
            samples.append(sample)
            if len(samples) == self.batch_size:
                yield {"batch": default_collate(samples), "stream": stream, "position": index + 1,
                       "skips": counter.take(), "details": counter.take_details(), "end": False}
                samples = []
        # epoch mode: the end of the stream, with its last partial batch (if any) and last skips
        yield {"batch": default_collate(samples) if samples else None, "stream": stream, "position": None,
               "skips": counter.take(), "details": counter.take_details(), "end": True}


class WebSource(_Source):
    """Main-process side of one webdataset: consumed positions per stream, epoch, round-robin."""

    def __init__(self, dataset, **settings):
        super().__init__(dataset, **settings)
        num_workers, world_size = self.num_workers, self.world_size
        self.num_streams = max(1, num_workers)
        if not dataset.resampled and len(dataset.urls) < world_size * self.num_streams:
            log.warning("dataset %r: %d shards for %d ranks x %d workers; some workers get no shard",
                        dataset.name, len(dataset.urls), world_size, self.num_streams)
        self._reset_epoch(0)

    def _reset_epoch(self, epoch: int) -> None:
        self.epoch, self.next_stream = epoch, 0
        self.positions = [0] * self.num_streams
        self.finished: set[int] = set()
        self.batches_this_epoch = 0

    def _start(self) -> None:
        stream = _WebStream(self.dataset, batch_size=self.batch_size, rank=self.rank, world_size=self.world_size,
                            num_streams=self.num_streams, epoch=self.epoch, seed=self.seed,
                            rotation=self.next_stream, positions=self.positions, finished=self.finished)
        self._open(stream)

    def next_batch(self) -> dict:
        while True:
            if self._it is None:
                self._start()
            try:
                packet = next(self._it)
            except StopIteration:
                self.close()
                if self.dataset.resampled:
                    raise RuntimeError(f"dataset {self.name!r}: the resampled stream ended") from None
                if self.batches_this_epoch == 0:
                    raise RuntimeError(f"dataset {self.name!r}: an epoch over {len(self.dataset.urls)} "
                                       f"shards gave this rank no sample") from None
                self._reset_epoch(self.epoch + 1)
                continue
            self.on_skips(self.name, packet["skips"], packet["details"])
            stream = packet["stream"]
            self.next_stream = (stream + 1) % self.num_streams
            if packet["end"]:
                self.finished.add(stream)
            else:
                self.positions[stream] = packet["position"]
            if packet["batch"] is not None:
                self.batches_this_epoch += 1
                return packet["batch"]

    def state_dict(self) -> dict:
        return {"kind": "webdataset", "epoch": self.epoch, "next_stream": self.next_stream,
                "positions": list(self.positions), "finished": sorted(self.finished),
                "num_streams": self.num_streams, "batches_this_epoch": self.batches_this_epoch}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "webdataset" or state["num_streams"] != self.num_streams:
            raise ConfigError(f"dataset {self.name!r}: data state was saved with "
                              f"{state.get('num_streams')} streams (num_workers), this loader has "
                              f"{self.num_streams}; resume with the same num_workers")
        self.close()
        self.epoch, self.next_stream = int(state["epoch"]), int(state["next_stream"])
        self.positions = [int(p) for p in state["positions"]]
        self.finished = set(int(s) for s in state["finished"])
        self.batches_this_epoch = int(state["batches_this_epoch"])


# ---------------------------------------------------------------------- map-style (cc_sbu_align)
def epoch_batches(n: int, batch_size: int, rank: int, world_size: int, seed: int, epoch: int) -> list[list[int]]:
    """This rank's batches of one epoch, as ``DistributedSampler(shuffle=True, drop_last=True, seed=seed)``
    with ``set_epoch(epoch)`` and a ``drop_last`` DataLoader: one permutation seeded by ``seed + epoch``
    shared by all ranks, rank ``r`` takes every ``world_size``-th index from ``r``."""
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    mine = perm[: (n // world_size) * world_size][rank::world_size]
    return [mine[i * batch_size:(i + 1) * batch_size] for i in range(len(mine) // batch_size)]


class _BatchPlan(Sampler):
    """Infinite ``(epoch, batch number, indices)`` from a start position."""

    def __init__(self, n, batch_size, rank, world_size, seed, epoch, batch):
        self.args = (n, batch_size, rank, world_size, seed)
        self.epoch, self.batch = epoch, batch

    def __iter__(self):
        epoch, start = self.epoch, self.batch
        while True:
            for b, indices in enumerate(epoch_batches(*self.args, epoch)):
                if b >= start:
                    yield epoch, b, indices
            epoch, start = epoch + 1, 0


class _MapBatches(Dataset):
    """Worker side: loads a planned batch, drops (and counts) unreadable samples."""

    def __init__(self, dataset, name: str, seed: int):
        self.dataset, self.name, self.seed = dataset, name, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, plan):
        epoch, b, indices = plan
        samples, counter = [], skips.SkipCounter(self.name, keep_details=KEEP_DETAILS)
        load = getattr(self.dataset, "load", None)
        for i in indices:
            seed = mix_seed(self.seed, epoch, i)
            try:
                if load is not None:
                    samples.append(load(i, seed=seed))
                else:  # any map-style dataset: its randomness is seeded per sample all the same
                    with cpu_rng_scope(seed):
                        samples.append(self.dataset[i])
            except skips.SkipSample as exn:
                counter.add(exn.reason, exn.detail)
        return {"batch": default_collate(samples) if samples else None, "epoch": epoch, "batch_number": b,
                "skips": counter.take(), "details": counter.take_details()}


class MapSource(_Source):
    """Main-process side of one map-style dataset: the epoch and the next batch of this rank's plan."""

    def __init__(self, dataset, **settings):
        super().__init__(dataset, **settings)
        batch_size, world_size = self.batch_size, self.world_size
        if len(dataset) // world_size < batch_size:
            raise ConfigError(f"dataset {self.name!r} has {len(dataset)} samples, fewer than batch_size {batch_size} "
                              f"x world_size {world_size}: no full batch per rank")
        self.epoch, self.batch = 0, 0

    def _start(self) -> None:
        plan = _BatchPlan(len(self.dataset), self.batch_size, self.rank, self.world_size, self.seed,
                          self.epoch, self.batch)
        self._open(_MapBatches(self.dataset, self.name, self.seed), sampler=plan)

    def next_batch(self) -> dict:
        while True:
            if self._it is None:
                self._start()
            packet = next(self._it)
            self.on_skips(self.name, packet["skips"], packet["details"])
            self.epoch, self.batch = packet["epoch"], packet["batch_number"] + 1
            if packet["batch"] is not None:
                return packet["batch"]

    def state_dict(self) -> dict:
        return {"kind": "map", "epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "map":
            raise ConfigError(f"dataset {self.name!r}: data state is not a map-style position: {state}")
        self.close()
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
