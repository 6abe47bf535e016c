"""GPT4Image steps 1 and 2: images described per second by one rank at batch 1 vs batch 8, and
descriptions embedded per second with the bundled all-MiniLM-L6-v2.

    python benchmarks/bench_describe.py                        # a built default tiny world, else the fixture
    python benchmarks/bench_describe.py --tiny-world tiny_world --images 48 --rounds 3

Describing runs what one rank of ``python -m minigpt4.caption --labels dirs --prompt "... {label} ..."`` runs
after the model is loaded: reading and preprocessing each image file, batched greedy generation with a
class-conditioned prompt per image, and the fsynced JSONL part file. Embedding runs the text encoder of
``python -m minigpt4.gpt4image.embed`` over the descriptions (length-sorted batches). Each setting runs in
alternating rounds in one process with 1 torch thread (one rank = one core); medians are reported. The
machine is shared, so compare the ratios. Writes ``benchmarks/results/describe.json`` (``--out``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from argparse import Namespace
from pathlib import Path

import torch

from cli_args import built_tiny_world, default_tiny_world, is_built_tiny_world, not_built, positive_int, run_cli

ROOT = Path(__file__).resolve().parents[1]
PROG = Path(__file__).name
RESULTS = ROOT / "benchmarks" / "results" / "describe.json"
SHAPES = ["circle", "square", "triangle"]


def load_describer(tiny_world: Path | None):
    """(name, cfg, model, vis_processor) of the stage-2 model of ``tiny_world`` (a built one, checked by the
    argument parser); with none given, of the default tiny world if it is built, else the golden fixture."""
    from minigpt4 import inference

    if tiny_world is None:
        default = default_tiny_world()
        if is_built_tiny_world(default):
            tiny_world = default
        else:
            print(f"{PROG}: no built tiny world at {default}; describing with the golden-fixture micro model",
                  file=sys.stderr, flush=True)
    if tiny_world is not None:
        from minigpt4.testing.tiny_world import load_stage2

        cfg, model, vis = load_stage2(tiny_world)
        return "tiny-world stage 2", cfg, model, vis
    from minigpt4.testing.golden import write_config

    folder = Path(tempfile.mkdtemp(prefix="bench_describe_"))
    args = Namespace(cfg_path=str(write_config(folder)), options=[], device="cpu", low_resource=False,
                     load_in_4bit=False, device_map=None)
    cfg, model, vis, _ = inference.load_model(args)
    return f"golden fixture (no built tiny world at {default})", cfg, model, vis


def make_class_folder(root: Path, n: int, size: int) -> None:
    from PIL import Image, ImageDraw

    colors = ["red", "green", "blue", "yellow", "purple", "orange"]
    for i in range(n):
        shape = SHAPES[i % 3]
        img = Image.new("RGB", (size, size), (235, 235, 235))
        draw = ImageDraw.Draw(img)
        r = size // 5 + (i % 2) * size // 10
        c, fill = size // 2, colors[(i // 3) % len(colors)]
        box = (c - r, c - r, c + r, c + r)
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(c, c - r), (c - r, c + r), (c + r, c + r)], fill=fill)
        (root / shape).mkdir(parents=True, exist_ok=True)
        img.save(root / shape / f"{i:04d}.png")


def describe_round(model, vis, cfg, items, batch_size: int, max_new_tokens: int, out: Path):
    from minigpt4 import inference
    from minigpt4.caption import Captioner, PromptMaker
    from minigpt4.sharded_jsonl import ShardedJsonl

    args = Namespace(prompt="Describe this {label} in detail.", label_names=None)
    prompt_for = PromptMaker(args, cfg, items)
    gen = dict(max_new_tokens=max_new_tokens, num_beams=1, do_sample=False, repetition_penalty=1.0,
               stop_strings=inference.caption_stop_strings(model))
    out.unlink(missing_ok=True)
    output = ShardedJsonl(out, 0, 2)  # a rank's part file
    captioner = Captioner(model, vis, output, prompt_for, batch_size, gen)
    start = time.perf_counter()
    for item in items:
        captioner.add(item)
    captioner.flush()
    elapsed = time.perf_counter() - start
    output.close()
    rows = [json.loads(line) for line in output.part_path(0, 2).read_text().splitlines()]
    output.part_path(0, 2).unlink()
    return elapsed, {r["key"]: r.get("caption") for r in rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny-world", type=built_tiny_world, default=None, metavar="DIR",
                   help="a built tiny world (default: $MINIGPT4_TINY_WORLD, else ./tiny_world, else the "
                        "repository's; if none of them is built, the golden-fixture micro model)")
    p.add_argument("--images", type=positive_int, default=32)
    p.add_argument("--max-new-tokens", type=positive_int, default=48)
    p.add_argument("--texts", type=positive_int, default=128,
                   help="short descriptions embedded per round at batch 64")
    p.add_argument("--rounds", type=positive_int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    asked = os.environ.get("MINIGPT4_TINY_WORLD")
    if args.tiny_world is None and asked and not is_built_tiny_world(asked):
        p.error(f"$MINIGPT4_TINY_WORLD: {not_built(asked)}")
    torch.set_num_threads(1)

    from minigpt4.gpt4image.embed import embed_texts
    from minigpt4.gpt4image.text_encoder import TextEncoder
    from minigpt4.image_lists import class_folder_items

    name, cfg, model, vis = load_describer(args.tiny_world)
    size = int(cfg.model.get("image_size", 224))
    work = Path(tempfile.mkdtemp(prefix="bench_describe_"))
    make_class_folder(work / "train", args.images, size)
    items, _ = class_folder_items(work / "train")
    describe_round(model, vis, cfg, items[:4], 4, args.max_new_tokens, work / "warm.jsonl")  # warm-up
    times = {1: [], 8: []}
    texts = {}
    for _ in range(args.rounds):
        for batch in (1, 8):
            elapsed, texts[batch] = describe_round(model, vis, cfg, items, batch, args.max_new_tokens,
                                                   work / f"b{batch}.jsonl")
            times[batch].append(elapsed)
    same = sum(texts[1][k] == texts[8][k] for k in texts[1])
    per_s = {b: len(items) / statistics.median(t) for b, t in times.items()}

    encoder = TextEncoder(None, "auto", "cpu")
    described = [t for t in texts[8].values() if t] or ["a shape"]
    short = [described[i % len(described)] for i in range(args.texts)]
    paragraph = [" ".join(described[(i + j) % len(described)] for j in range(6)) for i in range(args.texts)]
    embed_texts(encoder, short[:64], 64, progress=False)  # warm-up
    settings = {"short_batch_1": (short[:32], 1), "short_batch_64": (short, 64),
                "paragraph_batch_64": (paragraph[:64], 64)}
    emb_times = {setting: [] for setting in settings}
    for _ in range(args.rounds):
        for setting, (subset, batch) in settings.items():
            start = time.perf_counter()
            embed_texts(encoder, subset, batch, progress=False)
            emb_times[setting].append(len(subset) / (time.perf_counter() - start))
    emb = {setting: statistics.median(v) for setting, v in emb_times.items()}
    tokens = {kind: round(statistics.mean(len(encoder.tokenize([t]).input_ids[0]) for t in subset[:64]), 1)
              for kind, subset in (("short", short), ("paragraph", paragraph))}

    result = {
        "describer": name, "images": len(items), "image_size": size, "max_new_tokens": args.max_new_tokens,
        "rounds": args.rounds, "torch_threads": 1, "prompt": "Describe this {label} in detail.",
        "describe_images_per_s": {"batch_1": round(per_s[1], 2), "batch_8": round(per_s[8], 2)},
        "describe_batch8_over_batch1": round(per_s[8] / per_s[1], 2),
        "batch8_same_text_as_batch1": f"{same}/{len(texts[1])}",
        "encoder": encoder.name, "encoder_dim": encoder.dim,
        "embed_texts": args.texts, "embed_mean_tokens": tokens,
        "embeddings_per_s": {setting: round(v, 1) for setting, v in emb.items()},
        "embed_batch64_over_batch1": round(emb["short_batch_64"] / emb["short_batch_1"], 2),
        "machine": {"cpus": os.cpu_count(), "load_average": [round(x, 1) for x in os.getloadavg()],
                    "platform": platform.platform(), "torch": torch.__version__},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(PROG, main))
