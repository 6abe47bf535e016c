"""Batch captioning from the command line.

    python -m minigpt4.caption --cfg-path eval_configs/minigpt4_eval.yaml --images photos/ --out captions.jsonl
    python -m minigpt4.caption --cfg-path ... --images 'shards/{00000..00099}.tar' --out captions.jsonl --batch-size 16

``--images`` is a folder (every image file below it, recursive, sorted) or webdataset shards (a brace
pattern of ``.tar`` files whose samples hold ``jpg``/``png``/...). Each output line is
``{"key", "image" | "shard", "caption"}``, or ``{"key", ..., "error"}`` for an image that could not be
read, so one bad file never stops the run. Rows whose key is already in ``--out`` are skipped: running
the same command again resumes where it stopped. Generation is greedy and batched; every row stops at
its own ``end_sym`` (or EOS), so a batch gives the same text per image as one image at a time.

The prompt, the image processor and the big-model options are described in :mod:`minigpt4.inference`.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from minigpt4 import inference
from minigpt4.caption_io import Item, JsonlOutput, ShardErrors, folder_items, shard_items

log = logging.getLogger("minigpt4.caption")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m minigpt4.caption", description=__doc__.split("\n\n")[0])
    inference.add_model_args(parser)
    parser.add_argument("--images", required=True, help="a folder of images, or a brace pattern of .tar shards")
    parser.add_argument("--out", required=True, type=Path, help="output JSONL (appended to; resumable)")
    parser.add_argument("--prompt", default=None,
                        help="instruction after the image, or a full prompt containing <ImageHere> "
                             "(default: the config's prompt_template with 'Describe this image in detail.', "
                             "or the image alone when there is no prompt_template)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=300)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.max_new_tokens < 1 or args.num_beams < 1:
        parser.error("--batch-size, --max-new-tokens and --num-beams must be at least 1")
    return args


class Captioner:
    """Collects readable images into batches and writes rows in input order."""

    def __init__(self, model, vis_processor, output: JsonlOutput, prompt, batch_size: int, gen_kwargs: dict):
        self.model, self.vis_processor, self.output = model, vis_processor, output
        self.prompt, self.batch_size, self.gen_kwargs = prompt, batch_size, gen_kwargs
        self.pending: list[tuple[Item, torch.Tensor | None, str | None]] = []
        self.counts = {"captioned": 0, "errors": 0, "skipped_done": 0}
        self.on_written = lambda n: None  # progress callback: rows written

    def add(self, item: Item) -> None:
        pixels, error = None, item.error
        if error is None:
            try:
                pixels = self.vis_processor(item.load())
            except ValueError as exc:
                error = str(exc)
        if error is not None:
            log.warning("%s: %s", item.key, error)
        self.pending.append((item, pixels, error))
        if sum(p is not None for _, p, _ in self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        good = [(item, px) for item, px, _ in self.pending if px is not None]
        captions = {}
        if good:
            with torch.inference_mode():
                texts = self.model.generate(torch.stack([px for _, px in good]), [self.prompt] * len(good),
                                            **self.gen_kwargs)
            captions = {id(item): text for (item, _), text in zip(good, texts)}
        rows = []
        for item, _, error in self.pending:
            row = {"key": item.key, item.kind: item.source}
            if error is None:
                row["caption"] = captions[id(item)]
                self.counts["captioned"] += 1
            else:
                row["error"] = error
                self.counts["errors"] += 1
            rows.append(row)
        self.output.write(rows)
        self.on_written(len(rows))
        self.pending = []


def run(args) -> dict:
    with inference.cli_errors("minigpt4.caption"):
        source = Path(args.images)
        shard_errors = ShardErrors()
        if source.is_dir():
            items, others = folder_items(source)
            if others:
                log.info("%s: left out %d non-image file(s) by extension, e.g. %s", source, len(others), others[0])
            total = len(items)
        else:
            items, total = shard_items(args.images, shard_errors), None
        output = JsonlOutput(args.out)
        cfg, model, vis_processor, device = inference.load_model(args)
        prompt = inference.caption_prompt(cfg.model, args.prompt)
    log.info("captioning on %s, batch %d, prompt %r, stop %s", device, args.batch_size, prompt,
             inference.caption_stop_strings(model))
    gen_kwargs = dict(max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, do_sample=False,
                      repetition_penalty=args.repetition_penalty,
                      stop_strings=inference.caption_stop_strings(model))
    captioner = Captioner(model, vis_processor, output, prompt, args.batch_size, gen_kwargs)
    seen: set[str] = set()
    try:
        with logging_redirect_tqdm(), tqdm(total=total, unit="img", disable=args.no_progress,
                                           desc="captioning") as bar:
            captioner.on_written = bar.update
            for item in items:
                if item.key in output.done:
                    captioner.counts["skipped_done"] += 1
                    bar.update(1)
                    continue
                if item.key in seen:
                    item.error = "duplicate key (an earlier sample has the same key)"
                seen.add(item.key)
                captioner.add(item)
            captioner.flush()
    finally:
        output.close()
    counts = {**captioner.counts, "shard_errors": len(shard_errors.errors)}
    log.info("done: %s -> %s", counts, args.out)
    return counts


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    counts = run(parse_args(argv))
    print(f"captioned {counts['captioned']}, errors {counts['errors']}, already done {counts['skipped_done']}"
          + (f", unreadable shard data {counts['shard_errors']}" if counts["shard_errors"] else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
