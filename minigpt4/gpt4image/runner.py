"""``runner: runner_classifier``: the MiniGPT-4 runner (checkpoints, exact resume, DDP, AMP, TensorBoard,
curves, SIGTERM) for a classifier whose whole network trains, plus:

- an epoch is one pass over the training split: ``run.iters_per_epoch`` defaults to
  ``len(train) // (batch_size_train * world_size)``;
- BatchNorm statistics: DDP broadcasts rank 0's buffers before every forward; before evaluating and saving
  they are broadcast too, so every rank evaluates and saves the same network and a resumed run continues
  exactly as an uninterrupted one;
- top-1 / top-5 on the ``val`` split after every epoch (sharded over ranks, exact counts), in log.txt and
  TensorBoard (``val/top1``, ``val/top5``);
- at the end, ``classifier.safetensors``: the plain timm classifier without the projection head.
"""
from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch.utils.data import default_collate

from minigpt4.common import dist as D
from minigpt4.common.config import ConfigError
from minigpt4.common.registry import registry
from minigpt4.datasets import skips
from minigpt4.gpt4image.model import topk_correct
from minigpt4.gpt4image.weights import export_classifier
from minigpt4.runners import checkpointing as C
from minigpt4.runners.runner_base import RunnerBase

log = logging.getLogger(__name__)


class Readable(torch.utils.data.Dataset):
    """``data`` at ``indices``; an image that cannot be read is its :class:`SkipSample` detail instead."""

    def __init__(self, data, indices):
        self.data, self.indices = data, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        try:
            return self.data[self.indices[i]]
        except skips.SkipSample as exn:
            return exn.detail


def collate_readable(items) -> tuple[dict | None, list[str]]:
    """(the collated readable samples or None, what was skipped)."""
    kept = [x for x in items if not isinstance(x, str)]
    return (default_collate(kept) if kept else None), [x for x in items if isinstance(x, str)]


@registry.register_runner("runner_classifier")
class ClassifierRunner(RunnerBase):
    derives_iters_per_epoch = True

    def __init__(self, cfg, job_id, task, model, datasets, **kwargs):
        run = cfg.run_cfg
        if len(datasets) != 1:
            raise ConfigError(f"runner_classifier trains on one dataset, got {list(datasets)}")
        (self.splits,) = datasets.values()
        batch = int(run.batch_size_train)
        if getattr(model, "mixup", None) is not None and batch % 2:
            raise ConfigError(f"run.batch_size_train must be even with model.mixup / model.cutmix (images are "
                              f"mixed in pairs), got {batch}")
        if getattr(model, "head", None) is not None and model.head_type == "bn" and batch < 2:
            raise ConfigError("run.batch_size_train must be at least 2 with the bn projection head (its BatchNorm "
                              "normalises over the batch), got 1")
        if run.get("iters_per_epoch") is None:
            world = kwargs["dist_info"].world_size if kwargs.get("dist_info") else 1
            n = len(self.splits["train"]) // (int(run.batch_size_train) * world)
            if n < 1:
                raise ConfigError(f"run.batch_size_train {run.batch_size_train} x {world} process(es) is larger "
                                  f"than the training split ({len(self.splits['train'])} images)")
            run.iters_per_epoch = n
        super().__init__(cfg, job_id, task, model, datasets, **kwargs)

    def _ddp(self, model):
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        # every parameter trains; buffers (BatchNorm statistics) are synced from rank 0 before each forward
        return DDP(model, device_ids=ids, output_device=ids[0] if ids else None)

    def _sync_buffers(self) -> None:
        if D.is_dist():
            for buf in self.model.buffers():
                dist.broadcast(buf, src=0)

    def save_checkpoint(self, state) -> None:
        self._sync_buffers()
        super().save_checkpoint(state)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, split: str = "val") -> dict:
        data = self.splits.get(split)
        if data is None:
            return {}
        self._sync_buffers()
        was_training = self.model.training
        self.model.eval()
        mine = Readable(data, range(self.dist.rank, len(data), self.dist.world_size))
        loader = torch.utils.data.DataLoader(mine, batch_size=self.run.batch_size_eval, collate_fn=collate_readable,
                                             num_workers=self.run.num_workers, shuffle=False)
        counts = torch.zeros(4, dtype=torch.float64)
        for batch, skipped in loader:
            for detail in skipped:
                skips.log_skip(split, skips.BAD_IMAGE, detail)
            counts[3] += len(skipped)
            if batch is None:
                continue
            image, label = batch["image"].to(self.device), batch["label"].to(self.device)
            with self._autocast():
                _, logits = self.model.features(image)
            top1, top5 = topk_correct(logits.float(), label)
            counts[:3] += torch.tensor([top1, top5, label.shape[0]], dtype=torch.float64)
        counts = D.all_reduce_sum(counts.to(self.device)).cpu()
        self.model.train(was_training)
        n = int(counts[2])
        return {f"{split}_top1": float(counts[0] / max(n, 1)), f"{split}_top5": float(counts[1] / max(n, 1)),
                f"{split}_images": n, f"{split}_skipped": int(counts[3])}

    def epoch_metrics(self, epoch: int) -> dict:
        metrics = self.evaluate("val")
        if metrics and self.reporter is not None and self.reporter.writer is not None:
            for key in ("top1", "top5"):
                self.reporter.writer.add_scalar(f"val/{key}", metrics[f"val_{key}"], epoch + 1)
        return metrics

    # ------------------------------------------------------------------ training
    def train(self) -> dict:
        result = super().train()
        if self.dist.is_main and "stopped_at" not in result:
            last = self.output_dir / C.weights_name(self.max_epoch - 1, self.iters_per_epoch, self.iters_per_epoch)
            if last.is_file():
                out = export_classifier(last, self.output_dir / "classifier.safetensors")
                log.info("classifier without the projection head: %s", out)
                result["classifier"] = str(out)
        return result
