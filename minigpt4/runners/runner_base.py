"""The iteration-based training loop (``runner: runner_base``).

An "epoch" is ``iters_per_epoch`` steps over an infinite loader, as the original. Per step: next batch ->
LR for (epoch, step) -> forward under autocast -> loss weighted by this rank's share of the global answer
tokens -> backward -> every ``accum_grad_iters`` steps an optimizer step (with optional clipping).
After each epoch (and every ``save_every`` steps) the trainable weights and a resume file are written.

Everything saving and loading needs is built in the constructor, before ``train()``: the resume file is
read (and checked) once, its weights go into the plain model, the model is wrapped for ``run.parallel``
(DDP or FSDP, :mod:`minigpt4.runners.parallel`), then the optimizer, LR schedule and reporter are built and
the rest of the resume file (optimizer, scaler, :class:`TrainState`, RNG, data position) is restored.

Loss weighting: the model returns the mean CE over its ``num_tokens`` answer tokens. Each rank multiplies its
loss by ``num_tokens * world_size / global_tokens``; DDP averages gradients over ranks, so the update equals
the one of a single process that sees the whole global batch (token-weighted mean), which the original
(a plain mean of per-rank means) does not give when answer lengths differ.
"""
from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from pathlib import Path

import torch

from minigpt4.common import dist as D
from minigpt4.errors import ConfigError
from minigpt4.common.fields import typed
from minigpt4.common.optim import build_lr_scheduler, build_optimizer
from minigpt4.common.registry import registry
from minigpt4.common.sections import RunConfig
from minigpt4.models.checkpoint import save_trainable
from minigpt4.runners import checkpointing as C
from minigpt4.runners import parallel as P
from minigpt4.runners.monitor import Reporter, StepMeter, peak_memory_mb
from minigpt4.runners.output import ensure_writable, job_folder
from minigpt4.runners.state import TrainState

log = logging.getLogger(__name__)

AMP_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is left untouched."""


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _batch_size(batch: dict) -> int:
    for key in ("image", "image_features"):
        if torch.is_tensor(batch.get(key)):
            return int(batch[key].shape[0])
    return len(batch.get("answer", ()))


@registry.register_runner("runner_base")
class RunnerBase:
    def __init__(self, cfg, job_id: str, task, model, datasets: dict, *, dist_info: D.DistInfo | None = None,
                 output_dir: str | Path | None = None, loader=None, resume: dict | None = None):
        """``output_dir``: the job folder, made and checked by the caller (else ``run.output_dir/job_id``,
        made here). ``resume``: a resume file read by :func:`checkpointing.load_resume` (else the one named
        by ``run.resume_ckpt_path``, if any)."""
        self.config, self.job_id, self.task, self.model = cfg, job_id, task, model
        self.datasets = datasets
        run = typed(RunConfig, cfg.run_cfg, "run")
        self.run = run
        self.dist = dist_info or D.DistInfo(device=model.device)
        self.device = self.dist.device
        self.max_epoch, self.iters_per_epoch = int(run.max_epoch), int(run.iters_per_epoch)
        self.total_steps = self.max_epoch * self.iters_per_epoch
        self.accum = run.accum_grad_iters
        self.save_every = run.save_every
        self.max_grad_norm = run.max_grad_norm
        self.log_freq = run.log_freq
        self.max_seconds = run.max_seconds
        self._check_steps()
        self.output_dir = Path(output_dir) if output_dir else ensure_writable(job_folder(run, job_id))
        self.amp_dtype, self.scaler = self._setup_amp()
        self._loader = loader
        self._last_good = None  # (resume file, global step) of the last complete checkpoint
        if resume is None and run.resume_ckpt_path:
            resume = C.load_resume(run.resume_ckpt_path, self.dist.world_size)
        points = D.all_gather_object(None if resume is None else (str(resume["path"]), resume["global_step"]))
        if len(set(points)) != 1:  # e.g. run.output_dir is not shared and --resume auto found different files
            raise ConfigError(f"the processes would resume from different points ({sorted(set(map(str, points)))}); "
                              "run.output_dir must be one folder shared by every node")
        if P.parallel_mode(run) == "fsdp":
            P.check_fsdp(cfg.model_cfg)
        if resume is not None:  # into the plain model, before any wrapper shards or replicates it
            self.model.load_projection(resume["weights_path"])  # strict: every trainable weight, right shapes
        self.parallel = P.build(self.model, run, self.dist, ddp=self._ddp)
        self.optimizer = build_optimizer(self.model, run)
        self.scheduler = build_lr_scheduler(self.optimizer, run)
        self.state = TrainState()
        self.reporter = None
        if self.dist.is_main:
            title = f"{self.output_dir.parent.name} / {self.output_dir.name}"  # e.g. "stage1 / tiny"
            self.reporter = Reporter(self.output_dir, run.tensorboard, title, self.state.history)
        if resume is not None:
            self._restore(resume)

    # ------------------------------------------------------------------ setup
    def _check_steps(self) -> None:
        if self.accum < 1:
            raise ConfigError("run.accum_grad_iters must be >= 1")
        if self.iters_per_epoch % self.accum:
            raise ConfigError(f"run.iters_per_epoch ({self.iters_per_epoch}) must be a multiple of "
                              f"run.accum_grad_iters ({self.accum})")
        if self.save_every is not None and (self.save_every <= 0 or self.save_every % self.accum):
            raise ConfigError(f"run.save_every ({self.save_every}) must be a positive multiple of "
                              f"run.accum_grad_iters ({self.accum})")

    def _setup_amp(self):
        """AMP on CUDA only: fp16 with a GradScaler, or bf16 (``run.amp_dtype``); fp32 elsewhere."""
        if not self.run.amp:
            return None, None
        if self.device.type != "cuda":
            log.info("run.amp is ignored on %s: training in float32", self.device.type)
            return None, None
        name = typed(RunConfig, self.run, "run").amp_dtype
        if name not in AMP_DTYPES:
            raise ConfigError(f"run.amp_dtype must be one of {sorted(AMP_DTYPES)}, got {name!r}")
        dtype = AMP_DTYPES[name]
        if dtype == torch.float16 and P.parallel_mode(self.run) == "fsdp" and self.dist.distributed:
            raise ConfigError("run.parallel: fsdp with run.amp_dtype float16 is not supported (the gradient scaler "
                              "would see only its own shard of the gradients); use run.amp_dtype: bfloat16")
        scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        return dtype, scaler

    @property
    def loader(self):
        if self._loader is None:
            from minigpt4.datasets import build_train_loader

            train_sets = {name: splits["train"] for name, splits in self.datasets.items()}
            self._loader = build_train_loader(train_sets, batch_size=int(self.run.batch_size_train),
                                              num_workers=self.run.num_workers,
                                              seed=self.run.seed, rank=self.dist.rank,
                                              world_size=self.dist.world_size)
        return self._loader

    def _ddp(self, model):
        """The DDP module for ``run.parallel: ddp`` (a runner may synchronise more than the trainable part)."""
        return P.ddp_module(model, self.device)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, state: TrainState) -> None:
        """Weights (rank 0) + resume file with every rank's RNG and data position. Collective: all ranks call."""
        rngs = D.all_gather_object(C.capture_rng())
        data = D.all_gather_object(self.loader.state_dict())
        weights = self.parallel.trainable_state()  # full tensors (gathered under FSDP)
        digests = D.all_gather_object(C.weights_digest(weights))
        if len(set(digests)) != 1:
            raise RuntimeError(f"trainable weights differ between ranks at global step {state.global_step}: "
                               f"{digests}")
        optimizer = self.parallel.optimizer_state(self.optimizer)
        error = None
        if self.dist.is_main:
            name = C.weights_name(state.epoch, state.step, self.iters_per_epoch)
            meta = {**self.model.checkpoint_meta(), "epoch": state.epoch, "global_step": state.global_step,
                    "job_id": self.job_id}
            resume = {"format": C.FORMAT_VERSION, "weights": name, **state.to_resume(),
                      "world_size": self.dist.world_size, "optimizer": optimizer,
                      "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                      "rng": rngs, "data": data, "weights_digests": digests, "job_id": self.job_id}
            try:
                with C.writing(self.output_dir / name):
                    save_trainable(self.output_dir / name, weights, meta)
                with C.writing(self.output_dir / C.RESUME_FILE):
                    C.atomic_torch_save(resume, self.output_dir / C.RESUME_FILE)
                log.info("saved %s and %s (global step %d)", name, C.RESUME_FILE, state.global_step)
            except C.CheckpointWriteError as e:
                error = f"{e}; {self._last_good_text()}"
        # every rank learns the outcome (this is also the barrier), so all of them stop on a failed save
        error = D.broadcast_object(error)
        if error is not None:
            raise C.CheckpointWriteError(error)
        self._last_good = (self.output_dir / C.RESUME_FILE, state.global_step)

    def _last_good_text(self) -> str:
        if self._last_good is None:
            return "no resume point was written before this one"
        path, step = self._last_good
        return f"the last good resume point {path} (global step {step}) is untouched"

    def _restore(self, resume: dict) -> None:
        """Everything of a resume file but the weights (loaded before wrapping): optimizer, scaler, position,
        then this rank's RNG and data position."""
        self.parallel.load_optimizer_state(self.optimizer, resume["optimizer"])
        if self.scaler is not None and resume["scaler"] is not None:
            self.scaler.load_state_dict(resume["scaler"])
        self.state.restore(resume, self.iters_per_epoch)
        C.restore_rng(resume["rng"][self.dist.rank])
        self.loader.load_state_dict(resume["data"][self.dist.rank])
        log.info("resumed from %s at epoch %d step %d (global step %d)", resume["path"], self.state.epoch,
                 self.state.step, self.state.global_step)
        self._last_good = (resume["path"], resume["global_step"])

    # ------------------------------------------------------------------ training
    def train(self) -> dict:
        self.model.train()
        if self.dist.is_main:
            for name, p in self.model.named_parameters():
                if p.requires_grad:
                    log.info("trainable: %s %s", name, list(p.shape))
            self.reporter.write_config(self.config.to_dict())
        self.optimizer.zero_grad(set_to_none=True)
        self._t_start = time.perf_counter()
        self._terminate = False
        self.stop_signal: int | None = None  # the signal that stopped the run, if one did
        last = {}
        stop_signals = (signal.SIGTERM, signal.SIGINT) if _main_thread() else ()
        previous = {sig: signal.signal(sig, self._on_stop_signal) for sig in stop_signals}
        state = self.state
        try:
            while state.epoch < self.max_epoch:
                stopped, stats = self._train_epoch(state)
                last = stats or last
                if stopped:
                    last = {**last, "stopped_at": state.global_step}
                    if self.stop_signal is not None:
                        last["stop_signal"] = signal.Signals(self.stop_signal).name
                    break
                state.next_epoch()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.reporter is not None:
                self.reporter.close()
            if self._loader is not None and hasattr(self._loader, "close"):
                self._loader.close()
        last.update(global_step=state.global_step, output_dir=str(self.output_dir))
        return last

    def _end_epoch(self, state: TrainState) -> dict:
        stats = {"epoch": state.epoch, **state.epoch_means()}
        stats.update(self.epoch_metrics(state.epoch))
        skipped = self.loader.skip_counts() if hasattr(self.loader, "skip_counts") else {}
        if skipped:  # this rank's bad samples, by reason
            stats["skipped"] = dict(skipped)
        if self.reporter is not None:
            self.reporter.epoch(stats)
            log.info("epoch %d: %s", state.epoch, stats)
        return stats

    def epoch_metrics(self, epoch: int) -> dict:
        """Extra per-epoch figures (e.g. validation accuracy) for log.txt; called on every rank (may be
        collective). MiniGPT-4 training has none."""
        return {}

    def _on_stop_signal(self, signum, frame) -> None:
        """SIGTERM/Ctrl-C: checkpoint at the next optimizer step and stop; a second Ctrl-C aborts at once."""
        if signum == signal.SIGINT and self._terminate:
            raise KeyboardInterrupt
        log.warning("%s: stopping at the next optimizer step with a checkpoint", signal.Signals(signum).name)
        self._terminate = True
        if self.stop_signal is None:
            self.stop_signal = signum

    def _train_epoch(self, state: TrainState):
        """The remaining steps of ``state.epoch``. Returns (stop requested?, epoch stats if it was completed)."""
        bar, redirect = None, contextlib.nullcontext()
        if self.dist.is_main and self.run.progress_bar:
            from tqdm.auto import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            bar = tqdm(total=self.iters_per_epoch, initial=state.step, desc=f"epoch {state.epoch}",
                       dynamic_ncols=True)
            redirect = logging_redirect_tqdm()  # log lines print above the bar instead of through it
        meter = StepMeter(self.total_steps, state.global_step)
        stats = None
        try:
            with redirect:
                while state.step < self.iters_per_epoch:
                    i = state.step
                    t0 = time.perf_counter()
                    batch = next(self.loader)
                    data_time = time.perf_counter() - t0
                    lr = self.scheduler.step(state.epoch, i)
                    stop_asked = self._terminate or (self.max_seconds is not None and
                                                     time.perf_counter() - self._t_start > self.max_seconds)
                    loss, stop = self._train_step(_to_device(batch, self.device), state.global_step, stop_asked)
                    state.record(loss, lr)
                    meter.update(_batch_size(batch) * self.dist.world_size, data_time, loss)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3e}")
                    if self.reporter is not None:
                        self.reporter.step(state.global_step, loss, lr)
                    done = state.step == self.iters_per_epoch
                    if self.dist.is_main and (state.global_step % self.log_freq == 0 or done):
                        self._log_line(state.epoch, i, meter.summary(state.global_step), lr)
                    stats = self._end_epoch(state) if done else None
                    if stats or stop or (self.save_every and state.global_step % self.save_every == 0):
                        self.save_checkpoint(state)
                    if stop:
                        log.warning("stopped at global step %d (run.max_seconds=%s or a stop signal); continue with "
                                    "--resume auto", state.global_step, self.max_seconds)
                        return True, stats
        finally:
            if bar is not None:
                bar.close()
        return False, stats

    def _train_step(self, samples: dict, global_step: int, out_of_time: bool) -> tuple[float, bool]:
        update = (global_step + 1) % self.accum == 0
        with self.parallel.sync(update):
            with self._autocast():
                out = self.parallel.module(samples)
            loss = out["loss"]
            # a model that does not report its token count is weighted per rank (plain mean over ranks)
            ntok = torch.as_tensor(out.get("num_tokens", 1), device=loss.device)
            # one collective for: global token count, token-weighted loss sum, stop request
            stats = torch.stack([ntok.detach().float().reshape(()), loss.detach().float() * ntok.float(),
                                 torch.tensor(float(out_of_time and update), device=loss.device)])
            stats = D.all_reduce_sum(stats.to(self.device))
            total_tokens, global_loss = stats[0], (stats[1] / stats[0]).item()
            if not math.isfinite(global_loss):
                kept = (f"the last good checkpoint in {self.output_dir} is kept"
                        if (self.output_dir / C.RESUME_FILE).is_file() else "no checkpoint had been saved yet")
                raise TrainingDiverged(f"loss is {global_loss} at global step {global_step + 1}; stopped without "
                                       f"saving; {kept} (check the learning rate and the inputs)")
            weight = ntok.float() * self.dist.world_size / total_tokens
            scaled = loss * weight / self.accum
            if self.scaler is not None:
                scaled = self.scaler.scale(scaled)
            scaled.backward()
        if update:
            if self.max_grad_norm:
                if self.scaler is not None:
                    self.scaler.unscale_(self.optimizer)
                params = [p for g in self.optimizer.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, float(self.max_grad_norm))
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return global_loss, bool(stats[2].item() > 0)

    def _log_line(self, epoch: int, i: int, s: dict, lr: float) -> None:
        log.info("epoch %d [%d/%d] loss %.4f lr %.3e samples/s %.2f data_wait %.0f%% eta %s peak_mem %.0f MB",
                 epoch, i + 1, self.iters_per_epoch, s["loss"], lr, s["samples_per_s"], 100 * s["data_wait"],
                 s["eta"], peak_memory_mb(self.device))
        if self.reporter is not None and self.reporter.writer is not None:
            step = epoch * self.iters_per_epoch + i + 1
            self.reporter.writer.add_scalar("train/samples_per_s", s["samples_per_s"], step)
