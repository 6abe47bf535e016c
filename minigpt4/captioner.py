"""Captioning a stream of images into rows written in input order.

With greedy single-beam decoding (the default), images go through the continuous-batching
:class:`~minigpt4.generation.Scheduler`: up to ``batch_size`` rows decode together and a row that
finishes is replaced by the next image at the next step, so a short caption never waits for the longest
one in its batch. Each row's tokens are the ones it gets alone. Beam search (``num_beams > 1``) runs
``batch_size`` images at a time through :meth:`MiniGPT4.generate` instead.

Rows are written as soon as they and every row before them are done; unreadable images become error rows
in their place.
"""
from __future__ import annotations

import collections
import dataclasses
import logging

import torch

from minigpt4.generation import Failed, Finished, Request, SamplingParams, Scheduler
from minigpt4.images import DEFAULT_MAX_IMAGE_PIXELS

log = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class _Entry:
    item: object
    pixels: torch.Tensor | None
    error: str | None
    caption: str | None = None
    failure: BaseException | None = None

    @property
    def done(self) -> bool:
        return self.error is not None or self.caption is not None or self.failure is not None

    def receive(self, event) -> None:
        if isinstance(event, Finished):
            self.caption = event.text
        elif isinstance(event, Failed):
            self.failure = event.error


class Captioner:
    """``add`` images one by one, ``flush`` at the end; rows go to ``output.write`` in input order.

    ``gen_kwargs`` are :meth:`MiniGPT4.generate`'s (``max_new_tokens``, ``num_beams``,
    ``repetition_penalty``, ``stop_strings``; ``do_sample`` must be false). ``continuous=None`` uses the
    continuous-batching scheduler whenever it can (one beam), ``False`` forces static batches.
    """

    def __init__(self, model, vis_processor, output, prompt_for, batch_size: int, gen_kwargs: dict,
                 max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, continuous: bool | None = None):
        self.model, self.vis_processor, self.output = model, vis_processor, output
        self.max_pixels = max_pixels
        self.prompt_for, self.batch_size, self.gen_kwargs = prompt_for, batch_size, dict(gen_kwargs)
        if self.gen_kwargs.get("do_sample"):
            raise ValueError("captioning is greedy: do_sample must be false")
        beams = int(self.gen_kwargs.get("num_beams", 1))
        self.continuous = beams == 1 if continuous is None else continuous
        if self.continuous and beams != 1:
            raise ValueError("continuous batching decodes one beam; use continuous=False for beam search")
        self.pending: collections.deque[_Entry] = collections.deque()
        self.waiting: collections.deque[Request] = collections.deque()
        self.scheduler = Scheduler(model, batch_size) if self.continuous else None
        self.params = None
        if self.continuous:
            stops = self.gen_kwargs.get("stop_strings")
            self.params = SamplingParams(
                max_new_tokens=int(self.gen_kwargs.get("max_new_tokens", 300)),
                repetition_penalty=float(self.gen_kwargs.get("repetition_penalty", 1.0)),
                stop_strings=tuple(model.stop_strings() if stops is None else stops),
                stop_token_ids=tuple(self.gen_kwargs.get("stop_token_ids", ())))
        self.counts = {"captioned": 0, "errors": 0, "skipped_done": 0}
        self.on_written = lambda n: None  # progress callback: rows written

    def add(self, item) -> None:
        pixels, error = None, item.error
        if error is None:
            try:
                pixels = self.vis_processor(item.load(self.max_pixels))
            except ValueError as exc:
                error = str(exc)
        if error is not None:
            log.warning("%s: %s", item.key, error)
        entry = _Entry(item, pixels, error)
        self.pending.append(entry)
        if not self.continuous:
            if sum(e.pixels is not None for e in self.pending) >= self.batch_size:
                self._static_batch()
            return
        if pixels is not None:
            self.waiting.append(Request(self.prompt_for(item), pixels.unsqueeze(0), self.params, sink=entry.receive))
        self._run(drain=False)

    def flush(self) -> None:
        if self.continuous:
            self._run(drain=True)
        else:
            self._static_batch()

    # ------------------------------------------------------------------ continuous batching
    def _run(self, drain: bool) -> None:
        """Decode until a slot is free and no image is waiting for one (``drain``: until all are done)."""
        sched = self.scheduler
        with torch.inference_mode():
            while self.waiting or sched.rows:
                if not drain and len(self.waiting) < sched.free_slots:
                    break  # room in the batch: read more images first
                joining = [self.waiting.popleft() for _ in range(min(sched.free_slots, len(self.waiting)))]
                sched.admit(joining)
                for request in joining:
                    request.images = None  # the pixels are in the KV cache now
                sched.step()
                self._write_ready()
        self._write_ready()

    def _write_ready(self) -> None:
        rows = []
        while self.pending and self.pending[0].done:
            entry = self.pending.popleft()
            if entry.failure is not None:
                self._write(rows)
                raise entry.failure
            rows.append(entry)
        self._write(rows)

    # ------------------------------------------------------------------ static batches (beam search)
    def _static_batch(self) -> None:
        good = [e for e in self.pending if e.pixels is not None]
        if good:
            with torch.inference_mode():
                texts = self.model.generate(torch.stack([e.pixels for e in good]),
                                            [self.prompt_for(e.item) for e in good], **self.gen_kwargs)
            for entry, text in zip(good, texts):
                entry.caption = text
        self._write(list(self.pending))
        self.pending.clear()

    # ------------------------------------------------------------------ output
    def _write(self, entries: list[_Entry]) -> None:
        if not entries:
            return
        rows = []
        for entry in entries:
            item = entry.item
            row = {"key": item.key, item.kind: item.source}
            if item.label is not None:
                row["label"] = item.label
            if entry.error is None:
                row["caption"] = entry.caption
                self.counts["captioned"] += 1
            else:
                row["error"] = entry.error
                self.counts["errors"] += 1
            rows.append(row)
        self.output.write(rows)
        self.on_written(len(rows))
