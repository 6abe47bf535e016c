"""Captioning images/s at batch 1, 8 and 16, with and without continuous batching, on a mix of short and
long answers.

    python benchmarks/bench_caption_continuous.py                 # writes benchmarks/results/caption_continuous.json
    python benchmarks/bench_caption_continuous.py --quick         # fewer images, one round
    python benchmarks/bench_caption_continuous.py --tiny-world tiny_world --images 96 --rounds 3

Runs what ``python -m minigpt4.caption`` runs after the model is loaded (:class:`minigpt4.captioner.Captioner`:
read and preprocess each image file, greedy generation, rows in input order; rows are kept in memory instead
of the fsynced JSONL file) with the tiny world's stage-2 model on its held-out images. Every other image
gets the CLI's default prompt (a detailed description, ~32 tokens, ending at ``###``), the others the image
alone (stage-1 format: a few tokens, or a run to ``--max-new-tokens``), so a batch mixes short and long
answers. *static* is transformers' ``generate`` on ``batch`` images at a time (every batch runs until its
longest row ends); *continuous* is the scheduler the CLI uses (a finished row takes the next image).
Settings alternate within each round, 1 torch thread; medians are reported. Speedups are ratios of images
per second of process CPU time (with one thread, the work done, whatever else shares the machine); the
wall-clock figures are reported too and match them on a quiet machine. ``run(quick)`` returns the figures
(``caption_speedup_continuous_b8_vs_b1``: continuous batch 8 over one image at a time, i.e. static batch 1;
``caption_texts_identical``: every setting wrote the same caption per image).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from cli_args import built_tiny_world, default_tiny_world, positive_int

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "caption_continuous.json"
SETTINGS = [("static", 1), ("static", 8), ("static", 16), ("continuous", 1), ("continuous", 8), ("continuous", 16)]


class _Rows:
    def __init__(self):
        self.rows = []

    def write(self, rows):
        self.rows += rows


def load_model(tiny_world: Path):
    from minigpt4.testing.tiny_world import load_stage2

    return load_stage2(tiny_world)


def held_out_items(tiny_world: Path, n: int):
    from minigpt4.caption_io import Item, load_image
    from minigpt4.tiny_world.write import read_eval

    eval_jsonl = tiny_world / "data" / "eval" / "test.jsonl"
    rows = read_eval(eval_jsonl)[:n]
    return [Item(r["image"], str(eval_jsonl.parent / r["image"]),
                 lambda max_pixels=None, p=eval_jsonl.parent / r["image"]: load_image(p, max_pixels))
            for r in rows]


def caption_round(model, vis, items, prompt_for, batch_size, gen, continuous):
    from minigpt4.captioner import Captioner

    out = _Rows()
    captioner = Captioner(model, vis, out, prompt_for, batch_size, gen, continuous=continuous)
    start, cpu_start = time.perf_counter(), time.process_time()
    for item in items:
        captioner.add(item)
    captioner.flush()
    elapsed = (time.perf_counter() - start, time.process_time() - cpu_start)
    return elapsed, {r["key"]: r["caption"] for r in out.rows}


def run(quick: bool = False, *, tiny_world: Path | None = None, images: int | None = None, rounds: int | None = None,
        max_new_tokens: int = 64, threads: int = 1) -> dict:
    from minigpt4 import inference

    images = images or (24 if quick else 64)
    rounds = rounds or (1 if quick else 3)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        tiny_world = Path(tiny_world) if tiny_world is not None else default_tiny_world()
        cfg, model, vis = load_model(tiny_world)
        items = held_out_items(tiny_world, images)
        described = inference.caption_prompt(cfg.model)
        index = {item.key: i for i, item in enumerate(items)}

        def prompt_for(item):
            return described if index[item.key] % 2 == 0 else None

        gen = dict(max_new_tokens=max_new_tokens, num_beams=1, do_sample=False, repetition_penalty=1.0,
                   stop_strings=inference.caption_stop_strings(model))
        caption_round(model, vis, items[:4], prompt_for, 4, gen, True)  # warm-up
        times = {s: [] for s in SETTINGS}
        texts = {}
        for _ in range(rounds):
            for mode, batch in SETTINGS:
                elapsed, texts[mode, batch] = caption_round(model, vis, items, prompt_for, batch, gen,
                                                            mode == "continuous")
                times[mode, batch].append(elapsed)
    finally:
        torch.set_num_threads(previous_threads)
    reference = texts["static", 1]
    identical = all(texts[s] == reference for s in SETTINGS)
    per_s = {f"{mode}_b{batch}": len(items) / statistics.median(t[1] for t in times[mode, batch])
             for mode, batch in SETTINGS}
    wall_per_s = {f"{mode}_b{batch}": len(items) / statistics.median(t[0] for t in times[mode, batch])
                  for mode, batch in SETTINGS}
    lengths = sorted(model.count_tokens(t) for t in reference.values())
    return {
        "model": "tiny-world stage 2", "images": len(items), "rounds": rounds, "torch_threads": threads,
        "max_new_tokens": max_new_tokens, "stop_strings": gen["stop_strings"],
        "prompts": {"even images": described, "odd images": "<ImageHere> (the image alone)"},
        "answer_tokens": {"min": lengths[0], "median": statistics.median(lengths), "max": lengths[-1],
                          "at_max_new_tokens": sum(n >= max_new_tokens - 1 for n in lengths)},
        "images_per_cpu_s": {k: round(v, 2) for k, v in per_s.items()},
        "images_per_wall_s": {k: round(v, 2) for k, v in wall_per_s.items()},
        "caption_speedup_continuous_b8_vs_b1_wall": round(wall_per_s["continuous_b8"] / wall_per_s["static_b1"], 2),
        "caption_speedup_continuous_b8_vs_b1": round(per_s["continuous_b8"] / per_s["static_b1"], 2),
        "caption_speedup_continuous_b16_vs_b1": round(per_s["continuous_b16"] / per_s["static_b1"], 2),
        "caption_speedup_static_b8_vs_b1": round(per_s["static_b8"] / per_s["static_b1"], 2),
        "caption_speedup_continuous_vs_static_b8": round(per_s["continuous_b8"] / per_s["static_b8"], 2),
        "caption_speedup_continuous_vs_static_b16": round(per_s["continuous_b16"] / per_s["static_b16"], 2),
        "caption_texts_identical": identical,
        "texts_identical_per_setting": {f"{m}_b{b}": sum(texts[m, b][k] == reference[k] for k in reference)
                                        for m, b in SETTINGS},
        "machine": {"cpus": os.cpu_count(), "load_average": [round(x, 1) for x in os.getloadavg()],
                    "platform": platform.platform(), "torch": torch.__version__},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="24 images, one round")
    p.add_argument("--tiny-world", type=built_tiny_world, default=None,
                   help="a built tiny world (default: $MINIGPT4_TINY_WORLD, else ./tiny_world, else the repository's)")
    p.add_argument("--images", type=positive_int, default=None,
                   help="held-out images per setting (default 64, quick 24)")
    p.add_argument("--rounds", type=positive_int, default=None, help="alternating rounds (default 3, quick 1)")
    p.add_argument("--max-new-tokens", type=positive_int, default=64)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.tiny_world is None:  # the default lookup: refused as a given --tiny-world is
        try:
            args.tiny_world = built_tiny_world(str(default_tiny_world()))
        except argparse.ArgumentTypeError as exc:
            p.error(str(exc))
    result = run(args.quick, tiny_world=args.tiny_world, images=args.images, rounds=args.rounds,
                 max_new_tokens=args.max_new_tokens)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
