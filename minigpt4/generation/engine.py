"""Continuous batching: many generation requests share one running batch; each row leaves when it
finishes and a waiting request takes its place at the next step.

A request is a prompt with ``<ImageHere>`` placeholders, its pixels and its :class:`SamplingParams`;
it reports to its own ``sink`` callable: :class:`Piece` events while it runs, then one :class:`Finished`
(or :class:`Failed`). :class:`Scheduler` does the work one step at a time in the caller's thread
(:func:`generate_all` runs a list of requests to the end); :class:`Engine` runs a scheduler in a
background thread, groups requests that arrive within ``batch_window`` of each other, and bounds the
waiting queue.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import threading
import time
from typing import Callable

import torch

from minigpt4.generation.batch import KVBatch
from minigpt4.generation.sampling import SamplingParams, select_tokens
from minigpt4.generation.text import RowText

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Piece:
    text: str


@dataclasses.dataclass
class Finished:
    text: str
    rest: str  # the end of ``text`` that was not sent as a Piece yet
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int
    ids: list[int]


@dataclasses.dataclass
class Failed:
    error: BaseException


class QueueFull(RuntimeError):
    """The engine's waiting queue is at its bound."""


@dataclasses.dataclass(eq=False)
class Request:
    prompt: str
    images: torch.Tensor | None  # [k, 3, S, S] for the prompt's k placeholders (None when k == 0)
    params: SamplingParams
    sink: Callable[[object], None] = lambda event: None
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def num_images(self) -> int:
        return 0 if self.images is None else len(self.images)


class _Row:
    def __init__(self, model, request: Request, params: SamplingParams, prompt_tokens: int):
        self.request = request
        self.params = params
        self.text = RowText(model, params.stop_strings)
        self.generator = params.generator(model.device)
        self.prompt_tokens = prompt_tokens


def _emit(request: Request, event) -> None:
    try:
        request.sink(event)
    except Exception:  # noqa: BLE001 - a consumer that went away must not stop the batch
        log.exception("dropping a request whose consumer failed")
        request.cancel()


class Scheduler:
    """One batch of at most ``max_batch_size`` rows, advanced by :meth:`run_step`."""

    def __init__(self, model, max_batch_size: int = 8):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model = model
        self.max_batch_size = max_batch_size
        self.batch = KVBatch(model)
        self.rows: list[_Row] = []
        self.eos_ids = model.eos_token_ids()
        self.default_top_k = getattr(model.llama_model.generation_config, "top_k", None)

    @property
    def free_slots(self) -> int:
        return self.max_batch_size - len(self.rows)

    # ------------------------------------------------------------------ joining
    def _embed(self, requests: list[Request]) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        pixels = [r.images for r in requests if r.num_images]
        images = None
        if pixels:
            with model.maybe_autocast():
                images, _ = model.encode_img(torch.cat(pixels))
        return model.embed_prompts([r.prompt for r in requests], images, [r.num_images for r in requests])

    @torch.no_grad()
    def admit(self, requests: list[Request]) -> None:
        """Prefill ``requests`` (at most ``free_slots``) and add them to the running batch."""
        requests = [r for r in requests if not r.cancelled]
        if not requests:
            return
        if len(requests) > self.free_slots:
            raise ValueError(f"{len(requests)} requests for {self.free_slots} free slots")
        try:
            embeds, attention = self._embed(requests)
            logits, joined = self.batch.prefill(embeds, attention)
            rows = [_Row(self.model, r, self._effective(r.params), int(n))
                    for r, n in zip(requests, attention.sum(1).tolist())]
            tokens = self._select(logits, rows)
        except Exception as exc:  # the running rows are untouched
            if len(requests) > 1:  # find the culprit: each request on its own
                for r in requests:
                    self.admit([r])
                return
            log.exception("prefill failed")
            _emit(requests[0], Failed(exc))
            return
        joined.set_last(tokens)
        self.batch.merge(joined)
        self.rows += rows
        self._advance(tokens, first=len(self.rows) - len(rows))

    # ------------------------------------------------------------------ stepping
    def _select(self, logits: torch.Tensor, rows: list[_Row]) -> list[int]:
        histories = [torch.tensor([r.text.ids], dtype=torch.long, device=logits.device) if r.params.needs_history
                     else None
                     for r in rows]
        return select_tokens(logits, [r.params for r in rows], [r.generator for r in rows], histories)

    def _effective(self, params: SamplingParams) -> SamplingParams:
        if params.greedy or params.top_k is not None or not self.default_top_k:
            return params
        return dataclasses.replace(params, top_k=self.default_top_k)  # the LLM's default, as generate()

    def _advance(self, tokens: list[int], first: int = 0) -> None:
        """Record each row's new token (rows ``first``..), stream it, and drop the rows that are done."""
        keep = list(range(first))
        for i, (row, token) in enumerate(zip(self.rows[first:], tokens), start=first):
            request = row.request
            if request.cancelled:
                continue
            reason = None
            ended = token in self.eos_ids or token in row.params.stop_token_ids
            if ended:
                reason = "stop"
            else:
                piece, stopped = row.text.push(token)
                if piece:
                    _emit(request, Piece(piece))
                if stopped:
                    reason = "stop"
                elif len(row.text.ids) >= row.params.max_new_tokens:
                    reason = "length"
            if reason is None:
                keep.append(i)
                continue
            text, rest = row.text.finish()
            generated = len(row.text.ids) + ended  # EOS / a stop token counts as a generated token
            _emit(request, Finished(text, rest, reason, row.prompt_tokens, generated, list(row.text.ids)))
        self._keep(keep)

    def _keep(self, keep: list[int]) -> None:
        keep = [i for i in keep if not self.rows[i].request.cancelled]
        self.batch.keep(keep)
        self.rows = [self.rows[i] for i in keep]

    @torch.no_grad()
    def step(self) -> None:
        """One decoding step for every running row."""
        self._keep(list(range(len(self.rows))))  # cancelled rows leave first
        if not self.rows:
            return
        try:
            logits = self.batch.step()
            tokens = self._select(logits, self.rows)
        except Exception as exc:
            log.exception("decoding step failed; failing the %d running request(s)", len(self.rows))
            for row in self.rows:
                _emit(row.request, Failed(exc))
            self._keep([])
            return
        self.batch.set_last(tokens)
        self._advance(tokens)


def generate_all(model, requests: list[Request], max_batch_size: int = 8) -> list[object]:
    """Run ``requests`` with continuous batching in this thread; returns each one's last event
    (:class:`Finished` or :class:`Failed`), in order."""
    results: dict[int, object] = {}
    pending = collections.deque(enumerate(requests))
    for i, r in pending:
        user_sink = r.sink

        def sink(event, i=i, user_sink=user_sink):
            user_sink(event)
            if isinstance(event, (Finished, Failed)):
                results[i] = event
        r.sink = sink
    sched = Scheduler(model, max_batch_size)
    while pending or sched.rows:
        joining = [pending.popleft()[1] for _ in range(min(sched.free_slots, len(pending)))]
        sched.admit(joining)
        sched.step()
    return [results.get(i) for i in range(len(requests))]


class Engine:
    """A :class:`Scheduler` in a background thread fed by a bounded queue.

    When the batch is empty, the first request waits up to ``batch_window`` seconds for others to join
    its prefill, but only while other requests are on their way (announced with :meth:`incoming` by a
    caller that still validates them), so a lone request never waits; while a batch runs, waiting
    requests join at the next step (up to ``max_batch_size``).
    """

    def __init__(self, model, max_batch_size: int = 8, batch_window: float = 0.015, max_queue: int = 64):
        self.scheduler = Scheduler(model, max_batch_size)
        self.batch_window = batch_window
        self.max_queue = max_queue
        self._queue: collections.deque[Request] = collections.deque()
        self._wake = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._incoming = 0

    @contextlib.contextmanager
    def incoming(self):
        """Announce a request that is being prepared (the batch window waits for it until it is submitted
        or given up)."""
        with self._wake:
            self._incoming += 1
        try:
            yield
        finally:
            with self._wake:
                self._incoming -= 1
                self._wake.notify()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return len(self.scheduler.rows)

    def submit(self, request: Request) -> Request:
        with self._wake:
            if self._stop:
                raise RuntimeError("the generation engine is stopped")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are already waiting (the queue holds {self.max_queue})")
            self._queue.append(request)
            self._wake.notify()
        return request

    def start(self) -> "Engine":
        self._thread = threading.Thread(target=self._run, name="minigpt4-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 10) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        for request in list(self._queue) + [row.request for row in self.scheduler.rows]:
            _emit(request, Failed(RuntimeError("the server is shutting down")))

    def _take(self, limit: int) -> list[Request]:
        out = []
        while self._queue and len(out) < limit:
            r = self._queue.popleft()
            if not r.cancelled:
                out.append(r)
        return out

    def _gather(self) -> list[Request]:
        sched = self.scheduler
        with self._wake:
            if not sched.rows:
                while not self._queue and not self._stop:
                    self._wake.wait(timeout=0.5)
                if self._stop:
                    return []
                deadline = time.monotonic() + self.batch_window
                while len(self._queue) < sched.free_slots and self._incoming > 0 and not self._stop:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._wake.wait(timeout=left)
            return self._take(sched.free_slots)

    def _run(self) -> None:
        while not self._stop:
            try:
                joining = self._gather()
                self.scheduler.admit(joining)
                self.scheduler.step()
            except Exception:  # noqa: BLE001 - keep serving; admit/step already failed their requests
                log.exception("generation engine loop error")
