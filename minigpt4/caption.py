"""Batch captioning from the command line, on one process or split over torchrun ranks.

    python -m minigpt4.caption --cfg-path eval_configs/minigpt4_eval.yaml --images photos/ --out captions.jsonl
    python -m minigpt4.caption --cfg-path ... --images 'shards/{00000..00099}.tar' --out captions.jsonl --batch-size 16
    torchrun --nproc-per-node 4 -m minigpt4.caption --cfg-path ... --images train/ --labels dirs \\
        --prompt "Describe this {label} in detail." --out descriptions.jsonl

``--images`` is a folder (every image file below it, recursive, sorted), one image file, or webdataset
shards (a brace pattern of ``.tar`` files whose samples hold ``jpg``/``png``/...). ``--labels dirs`` reads it as an
image-classification folder (``ROOT/<class>/...``, label = the class folder); ``--list FILE`` takes the
images and labels from a CSV (``path,label`` header) or JSONL (``{"path", "label"}``) file, paths relative
to ``--images`` or absolute inside it. A ``{label}`` field in ``--prompt`` is replaced by the image's class
name (``--label-names`` maps ids such as ``n01440764`` to names; underscores read as spaces).

Each output line is ``{"key", "image" | "shard", ["label"], "caption"}``, or ``"error"`` instead of
``"caption"`` for an image that could not be read, so one bad file never stops the run. The key is the
image's path relative to the folder (or the webdataset ``__key__``); a name that is not UTF-8 keeps its
bytes as ``\\udcXX`` escapes (``os.fsencode(key)`` gives them back). Under torchrun each rank captions its
share of what is left and appends to ``<out>.part-<rank>-of-<world>``; at the end the parts are merged
into ``--out`` in the order of the input listing. Rows whose key is already written (in ``--out`` or any
part) are skipped: running the same command again, with any number of ranks, resumes where it stopped.
Generation is greedy with continuous batching (:mod:`minigpt4.captioner`): ``--batch-size`` rows decode
together, every row stops at its own ``end_sym`` (or EOS) and its place goes to the next image at the next
step, so a batch gives the same text per image as one image at a time. With ``--num-beams`` > 1, images
go ``--batch-size`` at a time through beam search instead.

The prompt, the image processor and the big-model options are described in :mod:`minigpt4.inference`.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from minigpt4.errors import UsageError, non_empty, path_arg, user_errors
from minigpt4.images import DEFAULT_MAX_IMAGE_PIXELS

log = logging.getLogger("minigpt4.caption")
PROG = "python -m minigpt4.caption"


def __getattr__(name):  # Captioner stays importable from here without making --help import torch
    if name == "Captioner":
        from minigpt4.captioner import Captioner

        return Captioner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def parse_args(argv=None) -> argparse.Namespace:
    from minigpt4.inference import add_model_args

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    parser.add_argument("--images", type=non_empty, required=True,
                        help="a folder of images (the root of a --list), or a brace pattern of .tar shards")
    parser.add_argument("--labels", choices=["dirs"], default=None,
                        help="dirs: an image-classification folder, label = the first folder under --images")
    parser.add_argument("--list", type=path_arg, default=None, metavar="FILE",
                        help="CSV with a path,label header, or JSONL of {\"path\", \"label\"}: the images to "
                             "caption and their labels (paths relative to --images, or absolute inside it)")
    parser.add_argument("--label-names", type=path_arg, default=None, metavar="FILE",
                        help="class id -> name for {label} (JSON object, CSV id,name, or 'id name' lines)")
    parser.add_argument("--out", required=True, type=path_arg,
                        help="output JSONL (appended to; resumable; ranks write <out>.part-R-of-W, merged at the end)")
    parser.add_argument("--prompt", default=None,
                        help="instruction after the image, or a full prompt containing <ImageHere>; {label} is "
                             "replaced by the image's class name (default: the config's prompt_template with "
                             "'Describe this image in detail.', or the image alone when there is no prompt_template)")
    parser.add_argument("--template", choices=("auto", "tokenizer"), default="auto",
                        help="tokenizer: prompt in the LLM tokenizer's own chat template and stop at its end of "
                             "turn (same as --options model.chat_template=tokenizer) (default: auto = the config's)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=300)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
                        help="larger images (width x height, read from the header before decoding) become error "
                             "rows (default: 40000000)")
    parser.add_argument("--retry-errors", action="store_true",
                        help="caption again the images whose row in --out is an error (e.g. after repairing "
                             "the files); other rows are kept")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.max_new_tokens < 1 or args.num_beams < 1 or args.max_image_pixels < 1:
        parser.error("--batch-size, --max-new-tokens, --num-beams and --max-image-pixels must be at least 1")
    if not args.repetition_penalty > 0:
        parser.error(f"--repetition-penalty must be a positive number (1.0: none), got {args.repetition_penalty}")
    return args


def check_args(args) -> None:
    labelled = args.labels is not None or args.list is not None
    if args.labels and args.list:
        raise UsageError("--labels dirs and --list are two ways to give labels; use one")
    if args.prompt and "{label}" in args.prompt and not labelled:
        raise UsageError("--prompt uses {label} but the images have no labels; add --labels dirs (class folders) "
                         "or --list FILE (path,label)")
    if args.prompt and args.prompt.count("<ImageHere>") > 1:
        raise UsageError(f"--prompt has {args.prompt.count('<ImageHere>')} <ImageHere>; a caption prompt holds one "
                         "image (or none: the instruction then follows the image)")
    if args.label_names and not labelled:
        raise UsageError("--label-names needs labels: add --labels dirs or --list FILE")
    if labelled and not Path(args.images).is_dir():
        why = "--list paths are relative to it" if args.list else "--labels dirs reads class folders under it"
        raise UsageError(f"--images {args.images}: not a folder ({why})")
    check_out(Path(args.out))


def check_out(out: Path) -> None:
    """``--out`` must be a file path whose folder can be written (one line instead of a traceback)."""
    if out.is_dir():
        raise UsageError(f"--out {out}: is a folder; give the path of a .jsonl file, e.g. {out / 'captions.jsonl'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out.parent):
            pass
        if out.exists():
            with open(out, "ab"):
                pass
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None


def listing(args):
    """``(items, urls)``: the ordered items of a folder or list, or the shard URLs."""
    from minigpt4 import caption_io, image_lists

    source = Path(args.images)
    if args.list is not None:
        return image_lists.list_items(args.list, source), None
    if args.labels == "dirs":
        items, others = image_lists.class_folder_items(source)
    elif source.is_dir():
        items, others = caption_io.folder_items(source)
    elif source.is_file() and source.suffix.lower() in caption_io.image_extensions():  # one image
        return [caption_io.Item(source.name, str(source), lambda max_pixels=DEFAULT_MAX_IMAGE_PIXELS: caption_io.load_image(source, max_pixels))], None
    else:
        return None, caption_io.shard_urls(args.images)
    if not items:
        shards = [o for o in others if o.name.endswith((".tar", ".tar.gz", ".tgz"))]
        hint = (f"; for webdataset shards give them as --images '{source}/{{00000..{len(shards) - 1:05d}}}.tar' "
                f"or '{source}/*.tar'" if shards else "")
        raise UsageError(f"--images {source}: no image file in the folder ({len(others)} other file(s) left out"
                         f"{', e.g. ' + others[0].name if others else ''}){hint}")
    if others:
        log.info("%s: left out %d file(s), e.g. %s", source, len(others), others[0])
    return items, None


class PromptMaker:
    """item -> prompt; ``{label}`` in the prompt becomes the image's readable class name."""

    def __init__(self, args, cfg, items):
        from minigpt4 import image_lists, inference

        self.template = inference.caption_prompt(cfg.model, args.prompt)
        self.readable = None
        if args.label_names and (self.template is None or "{label}" not in self.template):
            log.warning("--label-names is used for {label} in --prompt only; the prompt has none")
        elif self.template is not None and "{label}" in self.template:
            names = image_lists.read_label_names(args.label_names) if args.label_names else None
            self.readable = image_lists.readable_names((item.label for item in items), names, args.label_names)

    def __call__(self, item) -> str | None:
        if self.readable is None:
            return self.template
        return self.template.replace("{label}", self.readable[item.label])


def settings(args, cfg) -> dict:
    """What decides a caption: the model section (weights, prompt template, ...) and the generation flags."""
    from omegaconf import OmegaConf

    return {"model": OmegaConf.to_container(cfg.model, resolve=True), "prompt": args.prompt,
            "template": args.template, "max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams,
            "repetition_penalty": args.repetition_penalty, "label_names": str(args.label_names or "")}


def run(args) -> dict:
    from minigpt4 import caption_io, inference
    from minigpt4.common import dist as D
    from minigpt4.sharded_jsonl import ShardedJsonl, drop_rows, launch_ranks

    with user_errors("minigpt4.caption"):
        check_args(args)
        items, urls = listing(args)
        cfg = inference.load_config(args)
        device = inference.resolve_device(args.device, cfg)
        prompt_for = PromptMaker(args, cfg, items or [])
    info = launch_ranks(str(device) if device.index is not None else device.type)
    output = None
    try:
        with user_errors("minigpt4.caption"):
            if args.retry_errors:
                if info.is_main:
                    drop_rows(args.out, lambda row: "error" in row, "error row(s)")
                D.barrier()  # no rank reads what is done before the error rows are gone
            output = ShardedJsonl(args.out, info.rank, info.world_size)
            caption_io.check_settings(args.out, bool(output.done), settings(args, cfg), write=info.is_main)
            args.device = str(info.device)
            cfg, model, vis_processor, device = inference.load_model(args)
        D.barrier()  # every rank has read what is done before any rank writes
        done_sizes = D.all_gather_object(len(output.done))
        if len(set(done_sizes)) > 1:
            raise RuntimeError(f"ranks disagree on the rows already in {args.out}: {done_sizes}")
        counts = caption_share(args, info, output, items, urls, model, vis_processor, prompt_for)
        shard_keys = counts.pop("order")
        order = shard_order(urls, shard_keys) if items is None else [item.key for item in items]
        total = sum_counts(D.all_gather_object(counts))
        output.finish(order)
    finally:
        if output is not None:
            output.close()
        D.cleanup()
    if info.is_main:
        log.info("done: %s -> %s", total, args.out)
    return total


def caption_share(args, info, output, items, urls, model, vis_processor, prompt_for) -> dict:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from minigpt4 import inference
    from minigpt4.caption_io import ShardErrors, shard_items
    from minigpt4.captioner import Captioner
    from minigpt4.sharded_jsonl import rank_share

    gen_kwargs = dict(max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, do_sample=False,
                      repetition_penalty=args.repetition_penalty,
                      stop_strings=inference.caption_stop_strings(model))
    captioner = Captioner(model, vis_processor, output, prompt_for, args.batch_size, gen_kwargs,
                          args.max_image_pixels)
    shard_errors, order = ShardErrors(), {}
    if items is not None:
        todo = [item for item in items if item.key not in output.done]
        if info.is_main:
            captioner.counts["skipped_done"] = len(items) - len(todo)
        share = rank_share(todo, info.rank, info.world_size)
        total = len(share)
    else:
        share, total = shard_items(args.images, shard_errors, rank_share(urls, info.rank, info.world_size)), None
    log.info("rank %d/%d: captioning %s on %s, batch %d, prompt %r, stop %s", info.rank, info.world_size,
             f"{total} image(s)" if total is not None else "its shards", info.device, args.batch_size,
             prompt_for.template, gen_kwargs["stop_strings"])
    seen: set = set()
    try:
        with logging_redirect_tqdm(), tqdm(total=total, unit="img", disable=args.no_progress or not info.is_main,
                                           desc="captioning") as bar:
            captioner.on_written = bar.update
            for item in share:
                if items is None:
                    order.setdefault(item.source, []).append(item.key)
                    if item.key in output.done:
                        captioner.counts["skipped_done"] += 1
                        continue
                if item.key in seen:
                    item.error = "duplicate key (an earlier sample has the same key)"
                seen.add(item.key)
                captioner.add(item)
            captioner.flush()
    finally:
        output.close()
    return {**captioner.counts, "shard_errors": len(shard_errors.errors), "order": order}


def shard_order(urls, orders) -> list:
    """The keys in shard order, from every rank's ``{url: [keys]}``."""
    from minigpt4.common import dist as D

    merged: dict = {}
    for part in D.all_gather_object(orders):
        merged.update(part)
    return [key for url in urls for key in merged.get(url, [])]


def sum_counts(per_rank: list[dict]) -> dict:
    return {name: sum(c[name] for c in per_rank) for name in per_rank[0]}


def main(argv=None) -> int:
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    prefix = f"[rank {rank}] " if world > 1 else ""
    logging.basicConfig(level=logging.INFO, format=f"%(levelname)s {prefix}%(name)s: %(message)s", stream=sys.stderr)
    counts = run(parse_args(argv))
    if rank == 0:
        print(f"captioned {counts['captioned']}, errors {counts['errors']}, already done {counts['skipped_done']}"
              + (f", unreadable shard data {counts['shard_errors']}" if counts["shard_errors"] else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
