"""The describe stage: the stage-1 model describes each image with the paper's prompt, in the paper's format.

Each image is asked ``template.format(prompt)``, by default
``###Human: <Img><ImageHere></Img>Describe this image in detail. Give as many details as possible. Say
everything you see. ###Assistant: `` and the answer stops at ``###``. When the answer has at most
``continue_max_tokens`` (80) LLM tokens, the conversation goes on with ``###Human: Continue ###Assistant: ``
(the first answer stays in the context) and the two answers are joined with a space. Both turns are
batched and greedy. Rows go to ``described.jsonl`` as each batch finishes; images already there are
skipped. Images from webdataset shards are copied to ``images/`` so later stages can show and export them.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from types import SimpleNamespace

import torch

from minigpt4.caption_io import ShardErrors
from minigpt4.curate import sources
from minigpt4.curate.workdir import WorkDir
from minigpt4.sharded_jsonl import ShardedJsonl, rank_share

log = logging.getLogger(__name__)


def first_prompt(dcfg) -> str:
    return dcfg.template.format(dcfg.prompt)


def continue_prompt(dcfg, first_answer: str) -> str:
    """The first turn, its answer, and the Continue turn: ``...###Assistant: <answer> ###Human: Continue ###Assistant: ``."""
    return first_prompt(dcfg) + first_answer + " " + dcfg.template.format(dcfg.continue_prompt)


def load_stage1_model(model_args: dict):
    """``(model, vis_processor)`` from ``{"cfg_path", "options", "device"}`` as the inference CLIs read them."""
    from minigpt4 import inference

    args = SimpleNamespace(cfg_path=model_args.get("cfg_path"), options=list(model_args.get("options") or []),
                           device=model_args.get("device"), low_resource=False, load_in_4bit=False, device_map=None)
    if not args.cfg_path:
        raise inference.UsageError("--cfg-path (the stage-1 model config) is needed by the describe stage")
    _, model, vis_processor, _ = inference.load_model(args)
    return model, vis_processor


class Describer:
    def __init__(self, model, vis_processor, dcfg, output: ShardedJsonl, image_dir):
        self.model, self.vis_processor, self.dcfg, self.output = model, vis_processor, dcfg, output
        self.image_dir = image_dir
        self.pending = []  # (item, image path, pixels | None, error | None)
        self.counts = {"described": 0, "continued": 0, "errors": 0}
        self.gen_kwargs = dict(max_new_tokens=int(dcfg.max_new_tokens), num_beams=int(dcfg.num_beams),
                               do_sample=False, repetition_penalty=float(dcfg.repetition_penalty))

    def _keep_copy(self, item, image) -> str:
        """Shard images are saved under ``images/`` (PNG, lossless); folder images stay where they are."""
        if item.kind == "image":
            return os.path.abspath(item.source)  # later stages may run from another directory
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", item.key)[:80]
        name = f"{safe}-{hashlib.sha1(item.key.encode()).hexdigest()[:8]}.png"
        path = self.image_dir / name
        if not path.exists():
            self.image_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name("." + name + ".tmp.png")
            image.save(tmp)
            tmp.replace(path)
        return str(path)

    def add(self, item) -> None:
        pixels, error, where = None, item.error, (os.path.abspath(item.source) if item.kind == "image" else None)
        if error is None:
            try:
                image = item.load()
                pixels = self.vis_processor(image)
                where = self._keep_copy(item, image)
            except ValueError as exc:
                error = str(exc)
        if error is not None:
            log.warning("describe %s: %s", item.key, error)
        self.pending.append((item, where, pixels, error))
        if sum(p is not None for *_, p, _ in self.pending) >= int(self.dcfg.batch_size):
            self.flush()

    def _generate(self, pixels: list[torch.Tensor], prompts: list[str]) -> list[str]:
        with torch.inference_mode():
            return self.model.generate(torch.stack(pixels), prompts, stop_strings=list(self.dcfg.stop),
                                       **self.gen_kwargs)

    def n_tokens(self, text: str) -> int:
        return len(self.model.llama_tokenizer(text, add_special_tokens=False).input_ids)

    def flush(self) -> None:
        good = [(i, px) for i, (_, _, px, _) in enumerate(self.pending) if px is not None]
        answers: dict[int, dict] = {}
        if good:
            firsts = self._generate([px for _, px in good], [first_prompt(self.dcfg)] * len(good))
            for (i, _), first in zip(good, firsts):
                answers[i] = {"first": first, "first_tokens": self.n_tokens(first)}
            short = [(i, px) for i, px in good if answers[i]["first_tokens"] <= int(self.dcfg.continue_max_tokens)]
            if short:
                seconds = self._generate([px for _, px in short],
                                         [continue_prompt(self.dcfg, answers[i]["first"]) for i, _ in short])
                for (i, _), second in zip(short, seconds):
                    answers[i]["continuation"] = second
        rows = []
        for i, (item, where, _, error) in enumerate(self.pending):
            row = {"key": item.key}
            if where is not None:
                row["image"] = where
            if item.kind == "shard":
                row["shard"] = item.source
            if error is None:
                ans = answers[i]
                continued = "continuation" in ans
                text = f"{ans['first']} {ans['continuation']}".strip() if continued else ans["first"]
                row.update(ans, text=text, continued=continued)
                self.counts["described"] += 1
                self.counts["continued"] += continued
            else:
                row["error"] = error
                self.counts["errors"] += 1
            rows.append(row)
        self.output.write(rows)
        self.pending = []


def run_describe(cfg, work: WorkDir, *, model=None, vis_processor=None, model_args: dict | None = None,
                 rank: int = 0, world_size: int = 1) -> dict:
    """Describe the chosen images that are not in ``described.jsonl`` yet. ``model``/``vis_processor`` may be
    given (an already loaded stage-1 model), else they are loaded from ``model_args``. Under several ranks
    (the process group already joined), each rank describes its :func:`rank_share` of what is left and
    rank 0 merges the part files in input order."""
    from minigpt4.common import dist

    shard_errors = ShardErrors()
    keys, unique = [], set()
    for item in sources.select(cfg.images, cfg.num_images, int(cfg.seed), ShardErrors()):  # listing pass
        if item.key in unique:
            log.warning("describe %s: a second sample with this key is left out", item.key)
            continue
        unique.add(item.key)
        keys.append(item.key)
    output = ShardedJsonl(work.path("describe"), rank, world_size)
    dist.barrier()  # every rank has read what is done before any rank writes
    left = [k for k in keys if k not in output.done]
    mine = set(rank_share(left, rank, world_size))
    counts = {"described": 0, "continued": 0, "errors": 0, "already_done": len(keys) - len(left)}
    describer = None
    try:
        if mine:
            if model is None:
                model, vis_processor = load_stage1_model(model_args or {})
            describer = Describer(model, vis_processor, cfg.describe, output, work.images)
            log.info("describe: %d images here (%d left of %d), batch %d, prompt %r", len(mine), len(left),
                     len(keys), int(cfg.describe.batch_size), first_prompt(cfg.describe))
            done_here = 0
            for item in sources.select(cfg.images, cfg.num_images, int(cfg.seed), shard_errors):
                if item.key in mine:
                    mine.discard(item.key)  # a duplicate key is described once
                    describer.add(item)
                    done_here += 1
                    if done_here % (10 * int(cfg.describe.batch_size)) == 0:
                        log.info("describe: %d/%d", done_here, done_here + len(mine))
            describer.flush()
    except BaseException:
        output.close()  # rows written so far stay; the next run merges and skips them
        raise
    output.finish(order=keys)
    if describer is not None:
        counts.update(describer.counts)
    counts["shard_errors"] = len(shard_errors.errors)
    log.info("describe: %s", counts)
    return counts
