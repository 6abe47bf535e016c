"""Generation throughput: batch captioning at batch 1 vs batch 8, and streamed vs plain chat answers.

    python benchmarks/bench_generate.py                       # golden-fixture micro model, CPU, 1 thread
    python benchmarks/bench_generate.py --cfg-path eval_configs/tiny_eval.yaml --images 64

Captioning runs ``model.generate`` (what ``python -m minigpt4.caption`` calls per batch) greedily with
the model's own stop strings on preprocessed synthetic images; it reports images/s and generated
tokens/s, and whether batch 8 produced the same text per image as batch 1. Chat compares
``Chat.stream_answer`` (TextIteratorStreamer + a generation thread) with ``Chat.answer`` at a fixed
answer length; the image upload is not timed. Rounds alternate between the settings and medians are
reported: compare the ratios, not the absolute figures. Writes ``benchmarks/results/generate.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from PIL import Image, ImageDraw

from cli_args import positive_int, run_cli
from minigpt4 import inference
from minigpt4.conversation import Chat, training_conversation
from minigpt4.models import MiniGPT4

ROOT = Path(__file__).resolve().parents[1]
PROG = Path(__file__).name
RESULTS = ROOT / "benchmarks" / "results" / "generate.json"


def fixture_config() -> dict:
    """A config for the golden fixture's micro model (the one the tests use)."""
    from minigpt4.testing.golden import FX, model_cfg

    model = OmegaConf.to_container(model_cfg(FX))
    model.update({"prompt_template": "###Human: {} ###Assistant: ", "end_sym": "###"})
    size = model["image_size"]
    return {"model": model, "preprocess": {"vis_processor": {"eval": {"name": "blip2_image_eval", "image_size": size}}}}


def load(args):
    if args.cfg_path:
        cfg, model, vis, _ = inference.load_model(args)
        return cfg, model, vis
    cfg = OmegaConf.create(fixture_config())
    model = MiniGPT4.from_config(cfg.model, device=args.device or "cpu").eval()
    return cfg, model, inference.vis_processor_from_config(cfg)


def scenes(n: int, size: int = 224) -> list[Image.Image]:
    colors = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "cyan", "pink", "gray"]
    out = []
    for i in range(n):
        img = Image.new("RGB", (size, size), colors[(7 * i + 3) % len(colors)])
        draw = ImageDraw.Draw(img)
        for j in range(1 + i % 3):
            x, y, r = (37 * i + 53 * j) % size, (61 * i + 29 * j) % size, 20 + (i * 13 + j * 7) % 60
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colors[(i + 2 * j) % len(colors)])
        out.append(img)
    return out


def caption_round(model, pixels, prompt, batch_size, gen):
    texts, tokens = [], 0
    start = time.perf_counter()
    for i in range(0, len(pixels), batch_size):
        chunk = pixels[i : i + batch_size]
        texts += model.generate(chunk, [prompt] * len(chunk), **gen)
    elapsed = time.perf_counter() - start
    tokens = sum(model.count_tokens(t) for t in texts)
    return elapsed, texts, tokens


def chat_round(chat, image, stream: bool, new_tokens: int):
    conv, images = training_conversation(end_sym="\n"), []  # no stop string: every answer has new_tokens
    chat.upload_img(image, conv, images)
    chat.ask("Describe this image in detail.", conv)
    kw = dict(do_sample=False, max_new_tokens=new_tokens, min_length=new_tokens + 1)
    start = time.perf_counter()
    first = None
    if stream:
        for _ in chat.stream_answer(conv, images, **kw):
            first = first or time.perf_counter() - start
    else:
        chat.answer(conv, images, **kw)
    return time.perf_counter() - start, first


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cfg-path", default=None, help="default: the golden-fixture micro model")
    parser.add_argument("--device", default=None)
    parser.add_argument("--options", nargs="+", default=[], help="overrides of --cfg-path's config (key=value)")
    parser.add_argument("--images", type=positive_int, default=32)
    parser.add_argument("--max-new-tokens", type=positive_int, default=32)
    parser.add_argument("--chat-tokens", type=positive_int, default=128)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.options and not args.cfg_path:
        parser.error("--options needs --cfg-path (the golden-fixture micro model takes no overrides)")
    args.low_resource = args.load_in_4bit = False
    args.device_map = None
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg, model, vis = load(args)
    prompt = inference.caption_prompt(cfg.model)
    pixels = torch.stack([vis(img) for img in scenes(args.images)])
    gen = dict(max_new_tokens=args.max_new_tokens, do_sample=False, stop_strings=inference.caption_stop_strings(model))

    with torch.inference_mode():
        caption_round(model, pixels[:8], prompt, 8, gen)  # warm-up
        timings = {1: [], 8: []}
        outputs, tokens = {}, {}
        for _ in range(args.repeats):
            for bs in (1, 8):
                elapsed, texts, n_tok = caption_round(model, pixels, prompt, bs, gen)
                timings[bs].append(elapsed)
                outputs[bs], tokens[bs] = texts, n_tok
    caption = {}
    for bs in (1, 8):
        t = statistics.median(timings[bs])
        caption[f"batch_{bs}"] = {"images_per_s": args.images / t, "tokens_per_s": tokens[bs] / t,
                                  "seconds_median": t, "seconds_all": timings[bs]}
    caption["batch8_over_batch1_images_per_s"] = caption["batch_8"]["images_per_s"] / caption["batch_1"]["images_per_s"]
    caption["same_text_per_image"] = outputs[1] == outputs[8]
    caption["mean_caption_tokens"] = tokens[1] / args.images

    chat = Chat(model, vis, device=model.device)
    image = scenes(1)[0]
    chat_round(chat, image, True, 8)  # warm-up
    runs = {"stream": [], "answer": []}
    firsts = []
    for _ in range(args.repeats):
        for mode in ("stream", "answer"):
            elapsed, first = chat_round(chat, image, mode == "stream", args.chat_tokens)
            runs[mode].append(elapsed)
            if first is not None:
                firsts.append(first)
    stream_t, answer_t = statistics.median(runs["stream"]), statistics.median(runs["answer"])
    chat_figures = {"tokens": args.chat_tokens, "stream_tokens_per_s": args.chat_tokens / stream_t,
                    "answer_tokens_per_s": args.chat_tokens / answer_t,
                    "stream_over_answer_tokens_per_s": answer_t / stream_t,
                    "stream_first_piece_s_median": statistics.median(firsts) if firsts else None,
                    "seconds_all": runs}

    result = {"benchmark": "generate", "model": args.cfg_path or "tests/fixtures/minigpt4_tiny",
              "device": str(model.device), "threads": args.threads, "images": args.images,
              "max_new_tokens": args.max_new_tokens, "prompt": prompt, "stop_strings": gen["stop_strings"],
              "caption": caption, "chat": chat_figures,
              "command": "python benchmarks/bench_generate.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "cpu_count": os.cpu_count(), "platform": platform.platform()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({"caption_batch8_over_batch1": round(caption["batch8_over_batch1_images_per_s"], 2),
                      "images_per_s": {bs: round(caption[f"batch_{bs}"]["images_per_s"], 1) for bs in (1, 8)},
                      "same_text_per_image": caption["same_text_per_image"],
                      "stream_tokens_per_s": round(chat_figures["stream_tokens_per_s"], 1),
                      "answer_tokens_per_s": round(chat_figures["answer_tokens_per_s"], 1)}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(PROG, main))
