"""The iteration-based training loop (``runner: runner_base``).

An "epoch" is ``iters_per_epoch`` steps over an infinite loader, as the original. Per step: next batch ->
LR for (epoch, step) -> forward under autocast -> loss weighted by this rank's share of the global answer
tokens -> backward -> every ``accum_grad_iters`` steps an optimizer step (with optional clipping).
After each epoch (and every ``save_every`` steps) the trainable weights and a resume file are written.

Loss weighting: the model returns the mean CE over its ``num_tokens`` answer tokens. Each rank multiplies its
loss by ``num_tokens * world_size / global_tokens``; DDP averages gradients over ranks, so the update equals
the one of a single process that sees the whole global batch (token-weighted mean), which the original
(a plain mean of per-rank means) does not give when answer lengths differ.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import math
import signal
import threading
import time
from pathlib import Path

import torch

from minigpt4.common import dist as D
from minigpt4.common.config import ConfigError
from minigpt4.common.optim import build_lr_scheduler, build_optimizer
from minigpt4.common.registry import registry
from minigpt4.models.checkpoint import save_trainable
from minigpt4.runners import checkpointing as C
from minigpt4.runners.monitor import Reporter, StepMeter, peak_memory_mb

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
                 output_dir: str | Path | None = None, loader=None):
        self.config, self.job_id, self.task, self.model = cfg, job_id, task, model
        self.datasets = datasets
        run = cfg.run_cfg
        self.run = run
        self.dist = dist_info or D.DistInfo(device=model.device)
        self.device = self.dist.device
        self.max_epoch, self.iters_per_epoch = int(run.max_epoch), int(run.iters_per_epoch)
        self.total_steps = self.max_epoch * self.iters_per_epoch
        self.accum = int(run.get("accum_grad_iters", 1) or 1)
        self.save_every = run.get("save_every")
        self.max_grad_norm = run.get("max_grad_norm")
        self.log_freq = int(run.get("log_freq", 50))
        self.max_seconds = run.get("max_seconds")
        self._check_steps()
        for key, why in (("evaluate", "there is no evaluation split in MiniGPT-4 training"),
                         ("wandb_log", "metrics go to TensorBoard and log.txt")):
            if run.get(key, False):
                log.warning("run.%s is ignored: %s", key, why)
        from minigpt4.runners.output import ensure_writable, job_folder

        self.output_dir = ensure_writable(Path(output_dir) if output_dir else job_folder(run, job_id))
        self.amp_dtype, self.scaler = self._setup_amp()
        self._loader = loader

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
        if not self.run.get("amp", False):
            return None, None
        if self.device.type != "cuda":
            log.info("run.amp is ignored on %s: training in float32", self.device.type)
            return None, None
        name = str(self.run.get("amp_dtype", "float16"))
        if name not in AMP_DTYPES:
            raise ConfigError(f"run.amp_dtype must be one of {sorted(AMP_DTYPES)}, got {name!r}")
        dtype = AMP_DTYPES[name]
        scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        return dtype, scaler

    @property
    def loader(self):
        if self._loader is None:
            from minigpt4.datasets import build_train_loader

            train_sets = {name: splits["train"] for name, splits in self.datasets.items()}
            self._loader = build_train_loader(train_sets, batch_size=int(self.run.batch_size_train),
                                              num_workers=int(self.run.get("num_workers", 0)),
                                              seed=int(self.run.get("seed", 42)), rank=self.dist.rank,
                                              world_size=self.dist.world_size)
        return self._loader

    def _wrap(self):
        if not self.dist.distributed:
            return self.model
        from torch.nn.parallel import DistributedDataParallel as DDP

        # only the trainable part is synchronised; frozen weights and buffers are identical files on every rank
        ignore = [n for n, p in self.model.named_parameters() if not p.requires_grad]
        ignore += [n for n, _ in self.model.named_buffers()]
        DDP._set_params_and_buffers_to_ignore_for_model(self.model, ignore)
        ids = [self.device.index] if self.device.type == "cuda" else None
        # every buffer is ignored above; newer torch deprecates broadcast_buffers for forward_sync_buffers
        no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
                   else {"broadcast_buffers": False})
        return DDP(self.model, device_ids=ids, output_device=ids[0] if ids else None, **no_sync)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, epoch: int, step: int, global_step: int, epoch_sums: list) -> None:
        """Weights (rank 0) + resume file with every rank's RNG and data position. Collective: all ranks call."""
        rngs = D.all_gather_object(C.capture_rng())
        data = D.all_gather_object(self.loader.state_dict())
        digests = D.all_gather_object(C.weights_digest(self.model.trainable_state_dict()))
        if len(set(digests)) != 1:
            raise RuntimeError(f"trainable weights differ between ranks at global step {global_step}: {digests}")
        if self.dist.is_main:
            name = C.weights_name(epoch, step, self.iters_per_epoch)
            meta = {**self.model.checkpoint_meta(), "epoch": epoch, "global_step": global_step, "job_id": self.job_id}
            save_trainable(self.output_dir / name, self.model.trainable_state_dict(), meta)
            state = {"format": C.FORMAT_VERSION, "weights": name, "epoch": epoch, "step": step,
                     "global_step": global_step, "world_size": self.dist.world_size,
                     "optimizer": self.optimizer.state_dict(),
                     "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                     "rng": rngs, "data": data, "weights_digests": digests, "epoch_sums": list(epoch_sums),
                     "history": self.reporter.history if self.reporter else [], "job_id": self.job_id}
            C.atomic_torch_save(state, self.output_dir / C.RESUME_FILE)
            log.info("saved %s and %s (global step %d)", name, C.RESUME_FILE, global_step)
        D.barrier()

    def load_resume(self, path) -> tuple[int, int, int, list]:
        state = C.load_resume(path)
        if state["world_size"] != self.dist.world_size:
            raise ConfigError(f"run.resume_ckpt_path: {state['path']} was written by {state['world_size']} "
                              f"process(es); resume with the same number (now {self.dist.world_size})")
        self.model.load_projection(state["weights_path"])  # strict: every trainable weight, right shapes
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        C.restore_rng(state["rng"][self.dist.rank])
        self.loader.load_state_dict(state["data"][self.dist.rank])
        if self.reporter is not None:
            self.reporter.history = list(state.get("history", []))
        epoch, step = state["epoch"], state["step"]
        if step >= self.iters_per_epoch:
            epoch, step = epoch + 1, 0
        log.info("resumed from %s at epoch %d step %d (global step %d)", state["path"], epoch, step,
                 state["global_step"])
        sums = state.get("epoch_sums", [0.0, 0.0, 0]) if state["step"] < self.iters_per_epoch else [0.0, 0.0, 0]
        return epoch, step, state["global_step"], sums

    # ------------------------------------------------------------------ training
    def train(self) -> dict:
        self.model.train()
        self.ddp_model = self._wrap()
        self.optimizer = build_optimizer(self.model, self.run)
        self.scheduler = build_lr_scheduler(self.optimizer, self.run)
        title = f"{self.output_dir.parent.name} / {self.output_dir.name}"  # e.g. "stage1 / tiny"
        self.reporter = None
        if self.dist.is_main:
            self.reporter = Reporter(self.output_dir, self.run.get("tensorboard", True), title)
        if self.dist.is_main:
            for name, p in self.model.named_parameters():
                if p.requires_grad:
                    log.info("trainable: %s %s", name, list(p.shape))
            self.reporter.write_config(self.config.to_dict())
        epoch, step, global_step, sums = 0, 0, 0, [0.0, 0.0, 0]
        resume = self.run.get("resume_ckpt_path")
        if resume:
            epoch, step, global_step, sums = self.load_resume(resume)
        self.optimizer.zero_grad(set_to_none=True)
        self._t_start = time.perf_counter()
        self._terminate = False
        last = {}
        stop_signals = (signal.SIGTERM, signal.SIGINT) if _main_thread() else ()
        previous = {sig: signal.signal(sig, self._on_stop_signal) for sig in stop_signals}
        try:
            while epoch < self.max_epoch:
                stopped, global_step, sums, stats = self._train_epoch(epoch, step, global_step, sums)
                last = stats or last
                if stopped:
                    last = {**last, "stopped_at": global_step}
                    break
                epoch, step, sums = epoch + 1, 0, [0.0, 0.0, 0]
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.reporter is not None:
                self.reporter.close()
            if self._loader is not None and hasattr(self._loader, "close"):
                self._loader.close()
        last.update(global_step=global_step, output_dir=str(self.output_dir))
        return last

    def _end_epoch(self, epoch: int, sums: list) -> dict:
        stats = {"epoch": epoch, "train_loss": sums[0] / max(sums[2], 1), "train_lr": sums[1] / max(sums[2], 1)}
        skipped = self.loader.skip_counts() if hasattr(self.loader, "skip_counts") else {}
        if skipped:  # this rank's bad samples, by reason
            stats["skipped"] = dict(skipped)
        if self.reporter is not None:
            self.reporter.epoch(stats)
            log.info("epoch %d: %s", epoch, stats)
        return stats

    def _on_stop_signal(self, signum, frame) -> None:
        """SIGTERM/Ctrl-C: checkpoint at the next optimizer step and stop; a second Ctrl-C aborts at once."""
        if signum == signal.SIGINT and self._terminate:
            raise KeyboardInterrupt
        log.warning("%s: stopping at the next optimizer step with a checkpoint", signal.Signals(signum).name)
        self._terminate = True

    def _train_epoch(self, epoch: int, start: int, global_step: int, sums: list):
        """Steps ``start..iters_per_epoch-1`` of ``epoch``.
        Returns (stop requested?, global step, loss/lr sums, epoch stats if the epoch was completed)."""
        bar, redirect = None, contextlib.nullcontext()
        if self.dist.is_main and self.run.get("progress_bar", True):
            from tqdm.auto import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            bar = tqdm(total=self.iters_per_epoch, initial=start, desc=f"epoch {epoch}", dynamic_ncols=True)
            redirect = logging_redirect_tqdm()  # log lines print above the bar instead of through it
        meter = StepMeter(self.total_steps, global_step)
        stats = None
        try:
            with redirect:
                for i in range(start, self.iters_per_epoch):
                    t0 = time.perf_counter()
                    batch = next(self.loader)
                    data_time = time.perf_counter() - t0
                    lr = self.scheduler.step(epoch, i)
                    stop_asked = self._terminate or (self.max_seconds is not None and
                                                     time.perf_counter() - self._t_start > self.max_seconds)
                    loss, stop = self._train_step(_to_device(batch, self.device), global_step, stop_asked)
                    global_step += 1
                    sums = [sums[0] + loss, sums[1] + lr, sums[2] + 1]
                    meter.update(_batch_size(batch) * self.dist.world_size, data_time, loss)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3e}")
                    if self.reporter is not None:
                        self.reporter.step(global_step, loss, lr)
                    if self.dist.is_main and (global_step % self.log_freq == 0 or i + 1 == self.iters_per_epoch):
                        self._log_line(epoch, i, meter.summary(global_step), lr)
                    stats = self._end_epoch(epoch, sums) if i + 1 == self.iters_per_epoch else None
                    if stats or stop or (self.save_every and global_step % self.save_every == 0):
                        self.save_checkpoint(epoch, i + 1, global_step, sums)
                    if stop:
                        log.warning("stopped at global step %d (run.max_seconds=%s or a stop signal); continue with "
                                    "--resume auto", global_step, self.max_seconds)
                        return True, global_step, sums, stats
        finally:
            if bar is not None:
                bar.close()
        return False, global_step, sums, stats

    def _train_step(self, samples: dict, global_step: int, out_of_time: bool) -> tuple[float, bool]:
        update = (global_step + 1) % self.accum == 0
        sync = contextlib.nullcontext()
        if self.ddp_model is not self.model and not update:
            sync = self.ddp_model.no_sync()
        with sync:
            with self._autocast():
                out = self.ddp_model(samples)
            loss = out["loss"]
            # a model that does not report its token count is weighted per rank (plain mean over ranks)
            ntok = torch.as_tensor(out.get("num_tokens", 1), device=loss.device)
            # one collective for: global token count, token-weighted loss sum, stop request
            stats = torch.stack([ntok.detach().float().reshape(()), loss.detach().float() * ntok.float(),
                                 torch.tensor(float(out_of_time and update), device=loss.device)])
            stats = D.all_reduce_sum(stats.to(self.device))
            total_tokens, global_loss = stats[0], (stats[1] / stats[0]).item()
            if not math.isfinite(global_loss):
                raise TrainingDiverged(f"loss is {global_loss} at global step {global_step + 1}; stopped without "
                                       f"saving, the last good checkpoint in {self.output_dir} is kept")
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
