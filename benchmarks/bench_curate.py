"""Curation: the openai fixer's concurrency against a loopback server with a fixed latency, and (optionally)
a whole curation run on the tiny world's stage-1 model.

    python benchmarks/bench_curate.py                                  # fixer concurrency only
    python benchmarks/bench_curate.py --tiny-world tiny_world --num-images 200

Fixer: ``--rows`` paragraphs through the ``openai`` fixer at concurrency 1, 4 and 8 against the test
server (``minigpt4/testing/openai_server.py``) answering each request after ``--latency`` seconds; reports rows/s
and the speed-up over concurrency 1 (a remote API's latency dominates, so the limit sets the throughput).
Tiny world: ``python -m minigpt4.curate`` stages through the Python API with the ``rules`` fixer on N random
training images, seconds per stage and the summary. Writes ``benchmarks/results/curate.json`` (``--out``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from cli_args import built_tiny_world, non_negative_float, positive_int, run_cli

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "curate.json"


def bench_fixer(rows: int, latency: float) -> dict:
    from minigpt4 import curate
    from minigpt4.testing.curation import PARAGRAPH, described_workdir
    from minigpt4.testing.openai_server import ChatServer

    os.environ["BENCH_CURATE_KEY"] = "unused-local-key"
    out = {"rows": rows, "latency_s": latency, "by_concurrency": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = described_workdir(Path(tmp), {f"k{i:03d}": PARAGRAPH.format(i) for i in range(rows)})
        for limit in (1, 4, 8):
            with ChatServer(delay=latency) as server:
                cfg = curate.load_config(None, ["fix.fixer=openai", f"fix.openai.base_url={server.base_url}",
                                                "fix.openai.api_key_env=BENCH_CURATE_KEY",
                                                f"fix.openai.concurrency={limit}"], work_dir=work)
                start = time.perf_counter()
                curate.run(cfg, stages="fix", force=True)
                seconds = time.perf_counter() - start
            out["by_concurrency"][limit] = {"seconds": round(seconds, 3), "rows_per_s": round(rows / seconds, 2),
                                            "max_in_flight": server.max_in_flight}
    base = out["by_concurrency"][1]["seconds"]
    for entry in out["by_concurrency"].values():
        entry["speedup_vs_1"] = round(base / entry["seconds"], 2)
    return out


def bench_tiny_world(world: Path, num_images: int) -> dict:
    import torch

    from minigpt4 import curate

    torch.set_num_threads(1)
    world = world.resolve()
    options = [f"model.vit_ckpt={world}/backbones/vision/eva_vit.pth",
               f"model.q_former_model={world}/backbones/vision/blip2_qformer.pth",
               f"model.llama_model={world}/backbones/llm",
               f"model.ckpt={world}/runs/stage1/tiny/checkpoint_1.safetensors"]
    model_args = {"cfg_path": str(ROOT / "eval_configs" / "tiny_eval.yaml"), "options": options, "device": "cpu"}
    out = {"num_images": num_images, "seconds": {}}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = curate.load_config(None, ["describe.batch_size=16"], images=world / "data" / "cc_sbu_align" / "image",
                                 work_dir=tmp, num_images=num_images, fixer="rules")
        from minigpt4.curate.describe import load_stage1_model

        start = time.perf_counter()
        model, vis = load_stage1_model(model_args)
        out["seconds"]["load_model"] = round(time.perf_counter() - start, 2)
        for stage in ("describe", "fix", "filter", "review", "export"):
            start = time.perf_counter()
            result = curate.run(cfg, stages=stage, model=model, vis_processor=vis)
            out["seconds"][stage] = round(time.perf_counter() - start, 2)
        out["summary"] = {k: v for k, v in result["summary"].items() if k != "export"}
        described = [json.loads(line) for line in (Path(tmp) / "described.jsonl").read_text().splitlines()]
        out["examples"] = [{"raw": r.get("text"), "first_tokens": r.get("first_tokens")} for r in described[:3]]
    out["describe_images_per_s"] = round(num_images / out["seconds"]["describe"], 2)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=positive_int, default=32, help="paragraphs through the fixer")
    parser.add_argument("--latency", type=non_negative_float, default=0.2, help="the server's seconds per answer")
    parser.add_argument("--tiny-world", type=built_tiny_world, default=None, metavar="DIR",
                        help="a built tiny world: also time a whole curation run on its stage-1 model")
    parser.add_argument("--num-images", type=positive_int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_average_1min": round(os.getloadavg()[0], 2)},
              "fixer": bench_fixer(args.rows, args.latency)}
    if args.tiny_world is not None:
        result["tiny_world"] = bench_tiny_world(args.tiny_world, args.num_images)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    raise SystemExit(run_cli(Path(__file__).name, main))
