"""Training throughput of the GPT4Image classifier: the aligned step (CE + 0.3 x clip alignment through the
projection head) against the baseline step (lambda 0, same code, no head), alternated in one process so
machine load hits both alike. A step = forward + backward + SGD update on a random batch with random
L2-normalised text targets. Reports images/s per variant (median over rounds) and the overhead ratio, in wall
time and in this process's CPU time (one thread; CPU time is the steadier figure on a shared machine).

    python benchmarks/bench_gpt4image.py [--backbones resnet18,vit_tiny_patch16_224] [--batch 32] [--image-size 112]
                                        [--rounds 5] [--steps 3] [--out benchmarks/results/gpt4image.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from cli_args import int_at_least, positive_int, run_cli
from minigpt4.gpt4image.model import GPT4ImageClassifier

ROOT = Path(__file__).resolve().parents[1]
PROG = Path(__file__).name
TEXT_DIM = 384  # all-MiniLM-L6-v2, the offline default encoder
MIN_IMAGE_SIZE = 64  # the backbones downsample by up to 32 (a ViT patch, a ResNet's last stage): 2x2 left


def build(backbone: str, lam: float, image_size: int) -> GPT4ImageClassifier:
    torch.manual_seed(0)
    kwargs = {"img_size": image_size} if "vit" in backbone or "deit" in backbone else {}
    tau = 0.05 if kwargs else 0.2
    return GPT4ImageClassifier(backbone, 100, text_dim=TEXT_DIM, lam=lam, tau=tau, backbone_kwargs=kwargs).train()


def step_fn(model, batch):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        model(batch)["loss"].backward()
        opt.step()
    return step


def timed(step, steps: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) per step."""
    t, c = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t) / steps, (time.process_time() - c) / steps


def variants(backbone: str, image_size: int) -> dict[str, GPT4ImageClassifier]:
    return {"baseline": build(backbone, 0.0, image_size), "aligned": build(backbone, 0.3, image_size)}


def bench(backbone: str, models: dict, batch_size: int, image_size: int, rounds: int, steps: int) -> dict:
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(batch_size, 3, image_size, image_size, generator=g),
             "label": torch.randint(0, 100, (batch_size,), generator=g),
             "text_embedding": torch.nn.functional.normalize(torch.randn(batch_size, TEXT_DIM, generator=g), dim=1)}
    steps_of = {name: step_fn(model, batch) for name, model in models.items()}
    for step in steps_of.values():
        step()  # warm-up
    wall, cpu = {name: [] for name in steps_of}, {name: [] for name in steps_of}
    for _ in range(rounds):
        for name, step in steps_of.items():  # alternate: load changes hit both
            w, c = timed(step, steps)
            wall[name].append(w)
            cpu[name].append(c)
    ips = {name: batch_size / statistics.median(s) for name, s in wall.items()}
    cpu_ips = {name: batch_size / statistics.median(s) for name, s in cpu.items()}
    return {"backbone": backbone, "batch": batch_size, "image_size": image_size,
            "baseline_images_per_s": round(ips["baseline"], 2), "aligned_images_per_s": round(ips["aligned"], 2),
            "aligned_step_time_ratio": round(ips["baseline"] / ips["aligned"], 3),
            "baseline_images_per_cpu_s": round(cpu_ips["baseline"], 2),
            "aligned_images_per_cpu_s": round(cpu_ips["aligned"], 2),
            "aligned_cpu_time_ratio": round(cpu_ips["baseline"] / cpu_ips["aligned"], 3),
            "per_round_cpu_ratio": [round(a / b, 3) for a, b in zip(cpu["aligned"], cpu["baseline"])]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbones", default="resnet18,vit_tiny_patch16_224")
    p.add_argument("--batch", type=int_at_least(2), default=32, help="images per step (batch norm needs 2)")
    p.add_argument("--image-size", type=int_at_least(MIN_IMAGE_SIZE), default=112)
    p.add_argument("--rounds", type=positive_int, default=5)
    p.add_argument("--steps", type=positive_int, default=3)
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpt4image.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    # every backbone is built before any is timed: an unknown name is refused at once
    models = {b: variants(b, args.image_size) for b in args.backbones.split(",")}
    results = [bench(b, m, args.batch, args.image_size, args.rounds, args.steps) for b, m in models.items()]
    for r in results:
        print(f"{r['backbone']:24s} baseline {r['baseline_images_per_s']:7.1f} img/s  aligned "
              f"{r['aligned_images_per_s']:7.1f} img/s  wall ratio {r['aligned_step_time_ratio']:.3f}  "
              f"CPU-time ratio {r['aligned_cpu_time_ratio']:.3f}")
    report = {"results": results, "threads": args.threads, "rounds": args.rounds, "steps_per_round": args.steps,
              "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
              "command": "python benchmarks/bench_gpt4image.py"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(PROG, main))
