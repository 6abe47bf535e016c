"""Throughput of the stage-1 loader (laion builder, blip2_image_train 224, blip_caption, resampled
shards, shuffle buffer 1000) on generated 224 px JPEG shards, with 0 and 2 DataLoader workers.

    python benchmarks/bench_loader.py                       # writes benchmarks/results/loader.json
    python benchmarks/bench_loader.py --images 800 --repeats 5

Rounds alternate between the settings (0, 2, 0, 2, ...) and the median is reported, so a noisy,
shared machine affects both alike; compare the ratio, not the absolute figures. The first batch
of every round (worker start-up, shuffle buffer fill) is not timed. The main process runs torch
with one thread, so "0 workers" means one core decoding and augmenting. CPU time per sample (this
process and its workers, whole round including start-up and prefetched batches) does not depend on
how busy the machine is, and shows what the worker processes cost on top.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import webdataset as wds
from PIL import Image, ImageDraw

import minigpt4  # noqa: F401  (registers the builders)
from cli_args import non_negative_int, positive_int, run_cli
from minigpt4.common.registry import registry
from minigpt4.datasets import build_train_loader

RESULTS = Path(__file__).resolve().parent / "results" / "loader.json"


def make_shards(root: Path, images: int, per_shard: int, size: int = 224, seed: int = 0) -> str:
    """img2dataset-style shards of photo-like JPEGs (gradients + shapes, quality 95, ~10-20 kB each)."""
    rng = random.Random(seed)
    n_shards = (images + per_shard - 1) // per_shard
    for s in range(n_shards):
        with wds.TarWriter(str(root / f"{s:05d}.tar")) as sink:
            for i in range(min(per_shard, images - s * per_shard)):
                img = Image.linear_gradient("L").resize((size, size)).convert("RGB")
                draw = ImageDraw.Draw(img)
                for _ in range(12):
                    x, y = rng.randrange(size), rng.randrange(size)
                    r = rng.randrange(8, size // 3)
                    draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3)))
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=95)
                caption = f"A photo of {rng.randrange(1000)} coloured circles on a grey gradient."
                key = f"{s:05d}{i:04d}"
                sink.write({"__key__": key, "jpg": buf.getvalue(), "txt": caption,
                            "json": json.dumps({"caption": caption, "key": key}).encode()})
    return str(root / f"{{00000..{n_shards - 1:05d}}}.tar")


def build_dataset(storage: str):
    cfg = {"data_type": "images", "build_info": {"storage": storage},
           "vis_processor": {"train": {"name": "blip2_image_train", "image_size": 224}},
           "text_processor": {"train": {"name": "blip_caption"}}}
    return registry.get_builder_class("laion")(cfg).build_datasets()["train"]


def _cpu_seconds() -> float:
    """CPU time of this process plus its finished children (DataLoader workers, once joined)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measure(dataset, num_workers: int, batch_size: int, batches: int, seed: int) -> tuple[float, float]:
    """(samples/s over the timed batches, CPU ms per delivered sample over the whole round)."""
    cpu0 = _cpu_seconds()
    loader = build_train_loader({"laion": dataset}, batch_size=batch_size, num_workers=num_workers, seed=seed)
    try:
        next(loader)  # start-up and shuffle-buffer fill are not timed
        start = time.perf_counter()
        for _ in range(batches):
            batch = next(loader)
        elapsed = time.perf_counter() - start
        assert batch["image"].shape == (batch_size, 3, 224, 224)
    finally:
        loader.close()
    cpu_ms = (_cpu_seconds() - cpu0) * 1000 / ((batches + 1) * batch_size)
    return batches * batch_size / elapsed, cpu_ms


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=positive_int, default=400)
    parser.add_argument("--per-shard", type=positive_int, default=100)
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--batches", type=positive_int, default=60, help="timed batches per round")
    parser.add_argument("--repeats", type=positive_int, default=3, help="rounds per setting")
    parser.add_argument("--workers", type=non_negative_int, nargs="+", default=[0, 2])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        storage = make_shards(Path(tmp), args.images, args.per_shard)
        size_kb = sum(p.stat().st_size for p in Path(tmp).glob("*.tar")) / 1024 / args.images
        dataset = build_dataset(storage)
        rounds: dict[int, list[float]] = {w: [] for w in args.workers}
        cpu: dict[int, list[float]] = {w: [] for w in args.workers}
        load_start = os.getloadavg()[0]
        for r in range(args.repeats):
            for w in args.workers:
                rate, cpu_ms = measure(dataset, w, args.batch_size, args.batches, seed=r)
                rounds[w].append(rate)
                cpu[w].append(cpu_ms)
                print(f"round {r}: {w} workers: {rate:.1f} samples/s, {cpu_ms:.2f} CPU ms/sample", flush=True)

    median = {w: statistics.median(v) for w, v in rounds.items()}
    base = median[args.workers[0]]
    result = {
        "benchmark": "stage-1 loader (laion builder, resampled, shuffle_buffer 1000, blip2_image_train 224, "
                     "blip_caption)",
        "command": "python benchmarks/bench_loader.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "images": args.images, "bytes_per_image_kb": round(size_kb, 1), "batch_size": args.batch_size,
        "timed_batches_per_round": args.batches, "repeats": args.repeats,
        "samples_per_s": {str(w): round(m, 1) for w, m in median.items()},
        "samples_per_s_rounds": {str(w): [round(x, 1) for x in v] for w, v in rounds.items()},
        "ratio_vs_%d_workers" % args.workers[0]: {str(w): round(m / base, 2) for w, m in median.items()},
        "cpu_ms_per_sample": {str(w): round(statistics.median(v), 2) for w, v in cpu.items()},
        "machine": {"cpus": os.cpu_count(), "load_avg_1m_at_start": round(load_start, 2),
                    "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
                    "python": platform.python_version(), "torch": torch.__version__},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(Path(__file__).name, main))
