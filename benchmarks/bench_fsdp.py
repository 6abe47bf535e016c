"""Memory per rank, ``run.parallel: fsdp`` vs ``ddp``, 2 CPU processes (gloo), through the real runner.

The LLM is a randomly initialised Llama written to a temporary folder (``--hidden``/``--layers``/``--vocab``;
default ~92M parameters, 368 MB in fp32) with the micro fixture's tokenizer and vision tower; only
``llama_proj`` trains. Each rank reports (from /proc/self/status) the RSS after the model is loaded, the RSS
after wrapping (DDP or FSDP), and the peak RSS while training (the peak is reset after wrapping, so the
one-off full load, which both modes do on every rank, is reported apart).

    python benchmarks/bench_fsdp.py [--steps 3] [--out benchmarks/results/fsdp.json]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from cli_args import positive_int, run_cli

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "minigpt4_tiny"
HEAD_DIM = 64  # --hidden / 64 attention heads


def status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) to the current RSS


def write_llm(folder: Path, hidden: int, layers: int, vocab: int) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 64 * 64, num_hidden_layers=layers,
                      num_attention_heads=hidden // HEAD_DIM, vocab_size=vocab, max_position_embeddings=512,
                      tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    for f in (FIXTURE / "llm").iterdir():
        if "token" in f.name:
            shutil.copy(f, folder / f.name)
    return folder


class Batches:
    """An endless loader of one fixed batch (the TrainLoader interface)."""

    def __init__(self, batch):
        self.batch, self.pos = batch, 0

    def __iter__(self):
        return self

    def __next__(self):
        self.pos += 1
        return self.batch

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.pos = state["pos"]

    def close(self):
        pass


def worker(args) -> None:
    import torch

    torch.set_num_threads(1)
    from minigpt4.common import dist as D
    from minigpt4.common.config import Config
    from minigpt4.runners import RunnerBase
    from minigpt4.tasks import setup_task

    size = 224
    cfg = {"model": {"arch": "minigpt4", "vit_ckpt": str(FIXTURE / "eva_vit.pth"),
                     "q_former_model": str(FIXTURE / "blip2_qformer.pth"), "llama_model": args.llm,
                     "image_size": size, "num_query_token": 8,
                     "vit_config": {"hidden_size": 64, "intermediate_size": 279, "num_hidden_layers": 3,
                                    "num_attention_heads": 4, "patch_size": 14},
                     "qformer_config": {"hidden_size": 48, "num_hidden_layers": 4, "num_attention_heads": 4,
                                        "intermediate_size": 96, "cross_attention_frequency": 2,
                                        "layer_norm_eps": 1e-12}},
           "run": {"task": "image_text_pretrain", "init_lr": 1e-3, "min_lr": 1e-4, "warmup_lr": 1e-4,
                   "warmup_steps": 1, "max_epoch": 1, "iters_per_epoch": args.steps, "batch_size_train": 2,
                   "output_dir": args.out_dir, "job_id": args.parallel, "device": "cpu", "distributed": True,
                   "parallel": args.parallel, "progress_bar": False, "tensorboard": False, "log_freq": 1000,
                   "seed": 0}}
    config = Config.load(cfg_dict=cfg)
    info = D.init_distributed_mode(config.run_cfg)
    torch.manual_seed(0)
    model = setup_task(config).build_model(config, device="cpu")
    gc.collect()
    loaded = status_mb("VmRSS")
    load_peak = status_mb("VmHWM")
    batch = {"image": torch.randn(2, 3, size, size), "answer": ["a red circle", "a blue square on white"]}
    runner = RunnerBase(config, args.parallel, setup_task(config), model, {}, dist_info=info,
                        loader=Batches(batch))
    gc.collect()
    wrapped = status_mb("VmRSS")
    reset_peak()
    runner.train()
    row = {"rank": info.rank, "rss_loaded_mb": loaded, "peak_during_load_mb": load_peak, "rss_wrapped_mb": wrapped,
           "peak_training_mb": status_mb("VmHWM")}
    rows = D.all_gather_object(row)
    if info.is_main:
        Path(args.result).write_text(json.dumps(rows))
    D.cleanup()


def launch(mode: str, llm: Path, tmp: Path, steps: int) -> list[dict]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = tmp / f"{mode}.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
           __file__, "--worker", "--parallel", mode, "--llm", str(llm), "--steps", str(steps),
           "--out-dir", str(tmp / "runs"), "--result", str(result)]
    subprocess.run(cmd, check=True, env=env, cwd=tmp, stdout=subprocess.DEVNULL)
    return json.loads(result.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=positive_int, default=3)
    ap.add_argument("--hidden", type=positive_int, default=768, help=f"a multiple of {HEAD_DIM}")
    ap.add_argument("--layers", type=positive_int, default=6)
    ap.add_argument("--vocab", type=positive_int, default=32000,
                    help="at least the fixture tokenizer's vocabulary (its model's vocab_size)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/fsdp.json"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--parallel", help=argparse.SUPPRESS)
    ap.add_argument("--llm", help=argparse.SUPPRESS)
    ap.add_argument("--out-dir", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if args.hidden % HEAD_DIM:
        ap.error(f"argument --hidden: must be a multiple of {HEAD_DIM}, got {args.hidden}")
    least = json.loads((FIXTURE / "llm" / "config.json").read_text())["vocab_size"]
    if args.vocab < least:
        ap.error(f"argument --vocab: must be at least {least} (the fixture tokenizer's vocabulary), got {args.vocab}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        llm = write_llm(tmp / "llm", args.hidden, args.layers, args.vocab)
        from transformers import AutoConfig

        c = AutoConfig.from_pretrained(llm)
        inter = c.intermediate_size
        n_params = (2 * c.vocab_size * c.hidden_size + c.num_hidden_layers * (4 * c.hidden_size ** 2
                    + 3 * c.hidden_size * inter))
        rows = {mode: launch(mode, llm, tmp, args.steps) for mode in ("ddp", "fsdp")}
    mean = {mode: {k: sum(r[k] for r in rs) / len(rs) for k in rs[0] if k != "rank"} for mode, rs in rows.items()}
    out = {"llm": {"hidden": args.hidden, "layers": args.layers, "vocab": args.vocab,
                   "params_approx": n_params, "fp32_mb": n_params * 4 / 2**20},
           "world_size": 2, "steps": args.steps, "per_rank": rows, "mean_per_rank": mean,
           "fsdp_vs_ddp": {k: mean["fsdp"][k] / mean["ddp"][k] for k in mean["ddp"]},
           "fsdp_minus_ddp_mb": {k: mean["fsdp"][k] - mean["ddp"][k] for k in mean["ddp"]}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    raise SystemExit(run_cli(Path(__file__).name, main))
