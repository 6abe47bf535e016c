"""Training-step throughput of MiniGPT4 (forward + backward + AdamW step), with FLOP-accounted utilisation.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one real step, and compared with a
measured fp32 matmul peak of this machine. Also measures the same step from precomputed vision features
(``samples["image_features"]``), i.e. what a vision-feature cache buys.

    python benchmarks/bench_train_step.py [--batch 4] [--steps 10] [--out benchmarks/results/train_step.json]
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
from cli_args import positive_int, run_cli
from minigpt4.models import MiniGPT4
from minigpt4.testing.golden import FIXTURES, inputs, model_cfg


def matmul_peak(n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def step_fn(model, opt, samples):
    def step():
        opt.zero_grad(set_to_none=True)
        model(samples)["loss"].backward()
        opt.step()
    return step


def measure(step, steps: int) -> float:
    step()  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=positive_int, default=4)
    ap.add_argument("--steps", type=positive_int, default=10)
    ap.add_argument("--threads", type=positive_int, default=torch.get_num_threads())
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/train_step.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fx = FIXTURES / "minigpt4_tiny"
    model = MiniGPT4.from_config(model_cfg(fx, device="cpu"))
    model.train()
    px = inputs(fx)["pixel_values"]
    px = px.repeat((args.batch + len(px) - 1) // len(px), 1, 1, 1)[: args.batch]
    captions = (inputs(fx)["captions_raw"] * args.batch)[: args.batch]
    samples = {"image": px, "answer": captions}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    full = step_fn(model, opt, samples)
    with FlopCounterMode(display=False) as counter:
        full()
    flops = counter.get_total_flops()
    seconds = measure(full, args.steps)
    with torch.no_grad():
        feats = model.encode_features(px)
    cached = step_fn(model, opt, {"image_features": feats, "answer": captions})
    seconds_cached = measure(cached, args.steps)
    tokens = int(model.training_inputs(samples)["attention_mask"].sum())
    peak = matmul_peak()
    result = {
        "batch": args.batch, "threads": args.threads, "model": "golden-fixture micro model (224 px)",
        "step_seconds": seconds, "samples_per_s": args.batch / seconds, "tokens_per_s": tokens / seconds,
        "flops_per_step": flops, "achieved_gflops": flops / seconds / 1e9, "matmul_peak_gflops": peak / 1e9,
        "flop_utilisation": flops / seconds / peak,
        "step_seconds_from_cached_features": seconds_cached,
        "cached_features_speedup": seconds / seconds_cached,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    raise SystemExit(run_cli(Path(__file__).name, main))
