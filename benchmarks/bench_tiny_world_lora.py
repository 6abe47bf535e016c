"""Tiny world: stage 2 with LoRA on the LLM next to the projection-only stage 2, on the 200 held-out images.

    torchrun --nproc-per-node 2 train.py --cfg-path train_configs/tiny_stage2_lora.yaml --tiny-world tiny_world
    python benchmarks/bench_tiny_world_lora.py --tiny-world tiny_world \\
        --lora-ckpt tiny_world/runs/stage2_lora/tiny/checkpoint_6.safetensors
    # equal training: the same epoch of both runs
    python benchmarks/bench_tiny_world_lora.py --tiny-world tiny_world \\
        --lora-ckpt tiny_world/runs/stage2_lora/tiny/checkpoint_1.safetensors \\
        --proj-ckpt tiny_world/runs/stage2/tiny/checkpoint_1.safetensors

Both models go through ``minigpt4.tiny_world.evaluate`` (the measurements of the tiny world's report):
``eval_configs/tiny_eval.yaml`` (the projection-only stage-2 checkpoint) and ``eval_configs/tiny_eval_lora.yaml``
(``llama_proj`` + adapters). Writes ``benchmarks/results/tiny_world_lora.json`` (figures without the samples).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cli_args import built_tiny_world, positive_int, run_cli

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "tiny_world_lora.json"
FIGURES = ("attribute_accuracy", "malformed_rate", "description_accuracy", "description_per_attribute")


def evaluate(cfg_path: Path, world: Path, ckpt: str | None, limit: int) -> dict:
    import torch

    from minigpt4.common.config import Config
    from minigpt4.common.tiny_world_paths import set_tiny_world
    from minigpt4.models import MiniGPT4
    from minigpt4.processors import build_processor
    from minigpt4.tiny_world.evaluate import evaluate as run_eval

    set_tiny_world(world)
    cfg = Config.load(str(cfg_path), [f"model.ckpt={ckpt}"] if ckpt else [])
    torch.manual_seed(42)
    model = MiniGPT4.from_config(cfg.model_cfg, device="cpu")
    processor = build_processor(cfg.config.datasets.cc_sbu_align.vis_processor.train)
    t0 = time.perf_counter()
    result = run_eval(model, processor, world / "data" / "eval" / "test.jsonl", limit=limit, progress=False)
    figures = {k: result[k] for k in FIGURES}
    figures.update(images=result["images"], checkpoint=str(cfg.model_cfg.ckpt), eval_seconds=time.perf_counter() - t0,
                   trainable_parameters=sum(v.numel() for v in model.trainable_state_dict().values()))
    return figures


def check_checkpoints(args) -> None:
    """Read the given checkpoints before either model is evaluated: a missing, truncated or foreign file is the
    library's one-line user error naming the flag."""
    from minigpt4.errors import MissingFile
    from minigpt4.models.weight_files import read_state

    for flag, path in (("--lora-ckpt", args.lora_ckpt), ("--proj-ckpt", args.proj_ckpt)):
        if path is None:
            continue
        if not Path(path).exists():
            raise MissingFile(f"{flag} {path}: no such file")
        read_state(Path(path), flag)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny-world", type=built_tiny_world, default="tiny_world", metavar="DIR",
                   help="the built tiny world folder (default: tiny_world)")
    p.add_argument("--lora-ckpt", required=True, help="the LoRA stage-2 checkpoint to evaluate")
    p.add_argument("--proj-ckpt", default=None,
                   help="the projection-only stage-2 checkpoint (default: tiny_eval.yaml's, the last epoch); "
                        "give the same epoch as --lora-ckpt to compare equal training")
    p.add_argument("--images", type=positive_int, default=200, help="held-out images (default: 200, all)")
    p.add_argument("--threads", type=positive_int, default=2)
    args = p.parse_args(argv)
    import torch

    check_checkpoints(args)
    torch.set_num_threads(args.threads)
    out = {"projection_only": evaluate(ROOT / "eval_configs" / "tiny_eval.yaml", args.tiny_world, args.proj_ckpt,
                                       args.images),
           "lora": evaluate(ROOT / "eval_configs" / "tiny_eval_lora.yaml", args.tiny_world, args.lora_ckpt,
                            args.images)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    runs[f"{Path(args.lora_ckpt).stem} vs {Path(out['projection_only']['checkpoint']).stem}"] = out
    RESULTS.write_text(json.dumps(runs, indent=1))
    for name, r in out.items():
        print(f"{name:16s} attribute acc {r['attribute_accuracy']:.3f}  malformed {r['malformed_rate']:.3f}  "
              f"description acc {r['description_accuracy']:.3f}  trainable {r['trainable_parameters']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(Path(__file__).name, main))
