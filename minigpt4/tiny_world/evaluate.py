"""Evaluate a MiniGPT-4 model of the tiny world on held-out images with known attributes.

Two measurements, both greedy and batched through ``MiniGPT4``'s own generation path:

- **caption** (stage-1 format: image tokens only, no prompt): *attribute accuracy* = every object's colour
  and shape named correctly, left to right, and nothing else; plus per-attribute accuracies.
- **conversation** (the exact stage-2 training template, instructions of ``prompts/alignment.txt``): an
  answer is *malformed* when it does not end with ``end_sym`` within the token budget, is empty, repeats a
  sentence, contains a sentence outside the world's description grammar, or, sentence by sentence, is not
  the description of any possible scene (:func:`~minigpt4.tiny_world.text.is_coherent`: a comparison of
  objects it never described or of an object with itself, a missing sentence, a slot the count rules out).
  None of this reads the ground truth. *Description accuracy* = the share of answers that are well formed
  and state exactly the ground truth.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from minigpt4.images import open_image
from minigpt4.tiny_world import text as T
from minigpt4.tiny_world.write import read_eval

CAPTION_TOKENS = 24
REASONS = ("no end_sym", "empty", "repeats a sentence", "sentence outside the grammar",
           "not a description of any scene")
ANSWER_TOKENS = 96


def load_images(rows: list[dict], root: Path, processor) -> torch.Tensor:
    return torch.stack([processor(open_image(root / r["image"], max_pixels=None)) for r in rows])


@torch.no_grad()
def conversation_answers(model, images: torch.Tensor, instructions: list[str], max_new_tokens: int):
    """(answer text, terminated by end_sym) per row, generated under the training template."""
    prompts = [T.conversation_prompt(i) for i in instructions]
    return model.generate_answers(images, prompts, max_new_tokens=max_new_tokens, do_sample=False,
                                  stop_strings=[model.end_sym.strip()])


def judge_answer(answer: str, terminated: bool, scene) -> dict:
    parsed = T.parse_description(answer)
    reasons = []
    if not terminated:
        reasons.append("no end_sym")
    if not answer:
        reasons.append("empty")
    if len(set(parsed.sentences)) < len(parsed.sentences):
        reasons.append("repeats a sentence")
    if parsed.bad:
        reasons.append("sentence outside the grammar")
    if not reasons and not T.is_coherent(answer):  # only when nothing above explains it
        reasons.append("not a description of any scene")
    correct = not reasons and T.description_matches(parsed, scene)
    return {"malformed": bool(reasons), "reasons": reasons, "correct": correct,
            "attributes": T.description_attributes(parsed, scene)}


def caption_attributes(text: str, scene) -> dict:
    said = T.parse_caption(text) or []
    n = len(scene.objects)
    out = {"count": float(len(said) == n)}
    for i, attr in enumerate(("colour", "shape")):
        out[attr] = sum(j < len(said) and said[j][i] == getattr(o, attr) for j, o in enumerate(scene.objects)) / n
    return out


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


@torch.no_grad()
def evaluate(model, processor, eval_jsonl: Path, *, limit: int | None = None, batch_size: int = 50,
             progress: bool = True) -> dict:
    """Run both measurements on ``eval_jsonl`` (written by :func:`minigpt4.tiny_world.write.write_eval`)."""
    from tqdm import tqdm

    eval_jsonl = Path(eval_jsonl)
    rows = read_eval(eval_jsonl)[:limit]
    model.eval()
    samples = []
    batches = range(0, len(rows), batch_size)
    for start in tqdm(batches, desc=f"evaluate {len(rows)} images", disable=not progress, leave=False):
        chunk = rows[start:start + batch_size]
        images = load_images(chunk, eval_jsonl.parent, processor)
        captions = model.generate(images, None, max_new_tokens=CAPTION_TOKENS, stop_strings=["\n"])
        instructions = [T.INSTRUCTIONS[r["id"] % len(T.INSTRUCTIONS)] for r in chunk]
        answers = conversation_answers(model, images, instructions, ANSWER_TOKENS)
        for r, cap, instr, (ans, term) in zip(chunk, captions, instructions, answers):
            scene = r["scene"]
            samples.append({"id": r["id"], "image": r["image"], "truth_caption": r["caption"],
                            "truth_description": r["description"], "caption": cap,
                            "caption_correct": T.caption_correct(cap, scene),
                            "caption_attributes": caption_attributes(cap, scene), "instruction": instr,
                            "answer": ans, "terminated": term, **judge_answer(ans, term, scene)})
    return summarize(samples)


def summarize(samples: list[dict]) -> dict:
    keys_c = samples[0]["caption_attributes"].keys() if samples else ()
    keys_d = samples[0]["attributes"].keys() if samples else ()
    return {
        "images": len(samples),
        "attribute_accuracy": _mean(s["caption_correct"] for s in samples),
        "caption_per_attribute": {k: _mean(s["caption_attributes"][k] for s in samples) for k in keys_c},
        "malformed_rate": _mean(s["malformed"] for s in samples),
        "malformed_reasons": {r: sum(r in s["reasons"] for s in samples)
                              for r in REASONS},
        "description_accuracy": _mean(s["correct"] for s in samples),
        "description_per_attribute": {k: _mean(s["attributes"][k] for s in samples) for k in keys_d},
        "samples": samples,
    }


def write_json(path: Path, result: dict) -> None:
    Path(path).write_text(json.dumps(result, indent=1))
