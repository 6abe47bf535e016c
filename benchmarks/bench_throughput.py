"""Training throughput with and without the exact shortcuts, from pixels and from a feature store,
plus captioning with continuous batching (``bench_caption_continuous.py``, on a built tiny world).

    python benchmarks/bench_throughput.py --out benchmarks/results/throughput.json [--quick]

Model (random weights, built here, nothing downloaded): ViT 256x6 (224 px, patch 14), Q-Former 256x4
with 32 queries, Llama 512x8 (intermediate 1376, Llama-2's 32,000-token vocabulary; the golden
fixture's tokenizer writes the captions), fp32 on CPU, 2 threads, batch 8, stage-1 layout (no prompt,
``max_txt_len`` 32). Data: a cc_sbu_align-style folder of 384 px JPEGs whose captions mix short and
long alt-texts (half of 4-8 tokens, a quarter of 12-20, a quarter cut at 32), read through the library's
training loader (``num_workers`` 0) with ``blip2_image_eval``, so "from pixels" includes JPEG decoding and
resizing. Packing runs as one row of all tokens (``packing``) and in rows of 128 tokens (``packing_rows``,
``model.sequence_packing_row_tokens``). Every configuration trains on the same batches; the configurations are
run alternately (ABAB...) for ``--rounds`` rounds and their median samples/s compared as ratios.
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from cli_args import built_tiny_world, positive_int  # noqa: E402

TOKENIZER = ROOT / "tests/fixtures/minigpt4_tiny/llm"
BATCH = 8
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle", "bar", "star", "ring"]
PLACES = ["next to", "above", "below", "left of", "right of"]
ROW_TOKENS = 128  # packing in rows of this many tokens (about twice the longest sample of the mix)
BEST = "packing_rows+label_logits"  # the headline configuration (CPU: SDPA builds a dense mask per row)
# name -> (sequence_packing, label_logits_only, feature store, sequence_packing_row_tokens)
CONFIGS = {"faithful": (False, False, False, 0), "packing": (True, False, False, 0),
           "label_logits": (False, True, False, 0), "packing+label_logits": (True, True, False, 0),
           "packing+label_logits+store": (True, True, True, 0),
           "packing_rows+label_logits": (True, True, False, ROW_TOKENS),
           "packing_rows+label_logits+store": (True, True, True, ROW_TOKENS)}


def build_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    from minigpt4.models import MiniGPT4, VisionTower
    from minigpt4.models.llm import load_tokenizer
    from minigpt4.models.vision import qformer_config, vision_config

    torch.manual_seed(0)
    vit = vision_config({"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 6,
                         "num_attention_heads": 4, "patch_size": 14}, image_size=224)
    qf = qformer_config({"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
                         "intermediate_size": 1024, "cross_attention_frequency": 2}, vit.hidden_size)
    tower = VisionTower(vit, qf, 32).eval()
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1376,
                                       num_hidden_layers=8, num_attention_heads=8, max_position_embeddings=512,
                                       bos_token_id=1, eos_token_id=2, pad_token_id=0,
                                       attn_implementation="sdpa")).eval()
    tokenizer = load_tokenizer(str(TOKENIZER))
    model = MiniGPT4(tower, llm, tokenizer, max_txt_len=32, end_sym="\n")
    model.train()
    return model


def caption(rng: random.Random, kind: str) -> str:
    def thing():
        return f"a {rng.choice(COLOURS)} {rng.choice(SHAPES)}"

    if kind == "short":
        return thing()
    n = 2 if kind == "medium" else 5
    parts = [thing()]
    for _ in range(n - 1):
        parts.append(f"{rng.choice(PLACES)} {thing()}")
    return " ".join(parts) + (" on a white background, drawn with a thick pen" if kind == "long" else "")


def write_data(root: Path, n: int, seed: int = 0) -> Path:
    from shard_utils import jpeg_bytes

    rng = random.Random(seed)
    (root / "image").mkdir(parents=True, exist_ok=True)
    anns = []
    for i in range(n):
        kind = rng.choices(["short", "medium", "long"], weights=[2, 1, 1])[0]
        anns.append({"image_id": 1000 + i, "caption": caption(rng, kind)})
        (root / "image" / f"{1000 + i}.jpg").write_bytes(jpeg_bytes(rng, 384))
    (root / "filter_cap.json").write_text(json.dumps({"annotations": anns}))
    return root


def dataset(root: Path, store: Path | None):
    from omegaconf import OmegaConf

    import minigpt4  # noqa: F401
    from minigpt4.common.registry import registry

    block = {"build_info": {"storage": str(root)}, "vis_processor": {"train": {"name": "blip2_image_eval"}}}
    if store is not None:
        block["feature_store"] = str(store)
    builder = registry.get_builder_class("cc_sbu_align")(OmegaConf.create(block))
    return builder, builder.build_datasets()["train"]


def matmul_peak(n: int = 1024, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t))
    return best


class Trainer:
    """One configuration: its loader (same seed, hence the same batches) and the training step."""

    def __init__(self, model, datasets, name):
        self.model, self.name = model, name
        self.packing, self.label_only, self.store, self.row_tokens = CONFIGS[name]
        self.ds = datasets[self.store]
        self.opt = torch.optim.AdamW([model.llama_proj.weight, model.llama_proj.bias], lr=1e-6)

    def loader(self):
        from minigpt4.datasets import build_train_loader

        return build_train_loader({"cc_sbu_align": self.ds}, batch_size=BATCH, num_workers=0, seed=0)

    def configure(self, model) -> None:
        model.sequence_packing, model.label_logits_only = self.packing, self.label_only
        model.packing_row_tokens = self.row_tokens

    def step(self, batch) -> float:
        self.configure(self.model)
        self.opt.zero_grad(set_to_none=True)
        loss = self.model(batch)["loss"]
        loss.backward()
        self.opt.step()
        return loss.item()

    def run(self, steps: int, warm_up: bool) -> float:
        """samples/s over ``steps`` steps, data loading included (after one untimed step in the first round)."""
        loader = self.loader()
        if warm_up:
            self.step(next(loader))
        t = time.perf_counter()
        for _ in range(steps):
            self.step(next(loader))
        loader.close()
        return steps * BATCH / (time.perf_counter() - t)


def losses_and_grads(model, trainers, batches_by_store, direct: bool = False):
    """Loss and llama_proj gradient of every configuration on the same first batches (no update).
    ``direct``: every configuration, the faithful one included, through ``lm_loss.causal_lm_loss`` (the
    faithful path otherwise takes transformers' own loss, which computes in float32 whatever the dtype)."""
    from minigpt4.models import lm_loss

    out = {}
    for tr in trainers:
        tr.configure(model)
        vals, grads = [], []
        for batch in batches_by_store[tr.store]:
            model.zero_grad(set_to_none=True)
            if direct:
                inputs = model.training_inputs(batch)
                loss = lm_loss.causal_lm_loss(model.llama_model, inputs["inputs_embeds"], inputs["attention_mask"],
                                              inputs["labels"], packing=tr.packing, label_logits_only=tr.label_only,
                                              row_tokens=tr.row_tokens)
            else:
                loss = model(batch)["loss"]
            loss.backward()
            vals.append(loss.item())
            grads.append(model.llama_proj.weight.grad.clone())
        out[tr.name] = (vals, grads)
    return out


def differences(checks: dict) -> tuple[dict, dict]:
    """|loss - faithful loss| and max |llama_proj grad - faithful grad| per configuration."""
    ref_loss, ref_grad = checks["faithful"][0][0], checks["faithful"][1][0]
    return ({k: abs(v[0][0] - ref_loss) for k, v in checks.items()},
            {k: (v[1][0] - ref_grad).abs().max().item() for k, v in checks.items()})


def as_float64(batch: dict) -> dict:
    return {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}


def step_flops(trainer, batch) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        trainer.step(batch)
    return counter.get_total_flops()


def caption_figures(quick: bool, tiny_world: Path | None) -> dict:
    """Captioning figures from ``bench_caption_continuous.py`` on a built tiny world's stage-2 model; without
    one they are recorded as not measured (the training figures above do not need it)."""
    import bench_caption_continuous

    try:
        return {"caption_bench": "benchmarks/bench_caption_continuous.py",
                **bench_caption_continuous.run(quick=quick, tiny_world=tiny_world)}
    except SystemExit as exn:  # no built tiny world: say so in the results
        progress(f"captioning not measured: {exn}")
        return {"caption_bench": f"not measured: {exn}", "caption_speedup_continuous_b8_vs_b1": None,
                "caption_texts_identical": None}


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/throughput.json"))
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--rounds", type=positive_int, default=5)
    ap.add_argument("--steps", type=positive_int, default=6, help="timed steps per configuration and round")
    ap.add_argument("--quick", action="store_true", help="1 round of 2 steps (a smoke run, not for figures)")
    ap.add_argument("--tiny-world", type=built_tiny_world, default=None,
                    help="a built tiny world for the captioning figures (default: $MINIGPT4_TINY_WORLD, else "
                         "./tiny_world, else the repository's)")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.steps = 1, 2
    torch.set_num_threads(args.threads)
    from minigpt4.features.extract import extract

    model = build_model()
    tmp = Path(tempfile.mkdtemp(prefix="bench_throughput_"))
    n = BATCH * (args.steps + 1)
    root = write_data(tmp / "data", n)
    builder, plain = dataset(root, None)
    vis, _ = builder.build_processors()
    t = time.perf_counter()
    extract(model.vision, plain, vis, {"name": "blip2_image_eval"}, tmp / "store", batch_size=BATCH)
    extract_s = time.perf_counter() - t
    progress(f"feature store of {n} images written in {extract_s:.1f} s")
    _, stored = dataset(root, tmp / "store")
    trainers = [Trainer(model, {False: plain, True: stored}, name) for name in CONFIGS]

    first = {s: [next(tr.loader()) for tr in trainers if tr.store == s][0] for s in (False, True)}
    lengths = model.training_inputs(first[False])["attention_mask"].sum(1).tolist()
    checks = losses_and_grads(model, trainers, {s: [first[s]] for s in first})
    loss_diff, grad_diff = differences(checks)

    progress(f"loss checks done: {loss_diff}")
    peak = matmul_peak()
    counted = ("faithful", "packing+label_logits", "packing+label_logits+store", BEST, BEST + "+store")
    flops = {tr.name: step_flops(tr, first[tr.store]) for tr in trainers if tr.name in counted}
    fixed = {"setup": {"vit": "256x6 (224 px, patch 14)", "qformer": "256x4, 32 queries",
                       "llm": "Llama 512x8, vocab 32000", "batch": BATCH, "dtype": "float32", "threads": args.threads,
                       "rounds": args.rounds, "steps_per_round": args.steps,
                       "configurations_in_round_order": list(CONFIGS),
                       "sequence_lengths_first_batch": [int(x) for x in lengths]},
             "feature_store_extract_s": extract_s, "loss_max_abs_diff": max(loss_diff.values()),
             "loss_abs_diff_each": loss_diff, "grad_max_abs_diff_each": grad_diff, "flops_per_step": flops,
             "matmul_peak_gflops": peak / 1e9}
    rates = {name: [] for name in CONFIGS}
    for r in range(args.rounds):  # ABAB...: every configuration once per round, in the same order
        for tr in trainers:
            rates[tr.name].append(tr.run(args.steps, warm_up=r == 0))
            progress(f"round {r + 1}: {tr.name} {rates[tr.name][-1]:.3f} samples/s")
        write(args.out, {**fixed, **summary(rates, flops, peak), "rounds_done": r + 1})
    result = {**fixed, **summary(rates, flops, peak), "rounds_done": args.rounds}  # peak RSS of the training
    # the loss check again in float64 (after the timed rounds: the float64 copy doubles the memory); what is
    # left in float32 is rounding, a float32 ulp at a loss of 10 being 9.5e-7
    wide = copy.deepcopy(model).double()
    diff64, _ = differences(losses_and_grads(wide, trainers, {s: [as_float64(first[s])] for s in first}, direct=True))
    del wide
    result.update(loss_max_abs_diff_float64=max(diff64.values()), loss_abs_diff_float64_each=diff64)
    write(args.out, {**result, **caption_figures(args.quick, args.tiny_world)})
    print(Path(args.out).read_text())


def summary(rates: dict, flops: dict, peak: float) -> dict:
    """Ratios are medians of per-round ratios (both sides measured in the same round)."""
    def ratio(a, b):
        return statistics.median(x / y for x, y in zip(rates[a], rates[b]))

    median = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "train_samples_per_s": median,
        "train_samples_per_s_rounds": rates,
        "train_speedup_vs_faithful": ratio(BEST, "faithful"),
        "train_speedup_vs_faithful_each": {k: ratio(k, "faithful") for k in rates},
        "feature_store_speedup": ratio(BEST + "+store", BEST),
        "feature_store_speedup_one_row": ratio("packing+label_logits+store", "packing+label_logits"),
        "store_and_shortcuts_vs_faithful_pixels": ratio(BEST + "+store", "faithful"),
        "flop_utilisation": {k: flops[k] * median[k] / BATCH / peak for k in flops},
        "useful_flop_utilisation_vs_faithful_work": {k: flops["faithful"] * median[k] / BATCH / peak for k in rates},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def write(out: str, result: dict) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
