"""Captioning with continuous batching: finished rows are refilled, texts equal one-at-a-time generation."""
from __future__ import annotations

import pytest
import torch

from fixture_utils import FIXTURES, model_cfg
from inference_config import draw_scene
from minigpt4.caption_io import Item
from minigpt4.captioner import Captioner
from minigpt4.generation import SamplingParams, Scheduler
from minigpt4.generation.sampling import select_tokens
from minigpt4.models import MiniGPT4
from minigpt4.processors import Blip2ImageEvalProcessor

FX = FIXTURES / "minigpt4_tiny"
PROC = Blip2ImageEvalProcessor(image_size=224)
PROMPTS = ["###Human: <Img><ImageHere></Img> Describe this image in detail. ###Assistant: ", None]
# the fixture's random LLM rarely writes "###"; "Mss" ends some answers after a few tokens, others never
STOPS = ["Mss"]


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return MiniGPT4.from_config(model_cfg(FX, end_sym="###")).eval()


class Rows:
    def __init__(self):
        self.rows, self.calls = [], 0

    def write(self, rows):
        self.rows += rows
        self.calls += 1


def items(n, bad=()):
    out = []
    for i in range(n):
        if i in bad:
            out.append(Item(f"k{i}", f"img{i}", lambda max_pixels=None: None, error="not a readable image"))
        else:
            out.append(Item(f"k{i}", f"img{i}", lambda max_pixels=None, i=i: draw_scene(i)))
    return out


def prompt_for(item):
    return PROMPTS[int(item.key[1:]) % 2]


def caption_all(model, batch_size, gen, n=9, bad=(4,), **kw):
    out = Rows()
    captioner = Captioner(model, PROC, out, prompt_for, batch_size, gen, **kw)
    for item in items(n, bad):
        captioner.add(item)
    captioner.flush()
    return out, captioner


def one_at_a_time(model, gen, n=9, bad=(4,)):
    return {it.key: model.generate(PROC(it.load()).unsqueeze(0), [prompt_for(it)], **gen)[0]
            for it in items(n, bad) if it.error is None}


def test_refilled_batches_give_the_one_at_a_time_texts_in_input_order(model, monkeypatch):
    gen = dict(max_new_tokens=12, num_beams=1, do_sample=False, stop_strings=STOPS)
    expected = one_at_a_time(model, gen)
    admitted = []
    real_admit = Scheduler.admit

    def spy(self, requests):
        admitted.append(len(self.rows))
        return real_admit(self, requests)

    monkeypatch.setattr(Scheduler, "admit", spy)
    out, captioner = caption_all(model, 3, gen)
    assert captioner.continuous
    assert [r["key"] for r in out.rows] == [f"k{i}" for i in range(9)]
    assert out.rows[4] == {"key": "k4", "image": "img4", "error": "not a readable image"}
    assert {r["key"]: r["caption"] for r in out.rows if "caption" in r} == expected
    lengths = [model.count_tokens(t) for t in expected.values()]
    assert min(lengths) < 6 and max(lengths) >= 11, lengths  # short and long answers
    assert any(running > 0 for running in admitted)  # rows joined while others were still decoding
    assert out.calls > 1  # rows are written as they finish, not once at the end


def test_repetition_penalty_matches_generate(model):
    gen = dict(max_new_tokens=20, num_beams=1, do_sample=False, repetition_penalty=2.0, stop_strings=STOPS)
    out, _ = caption_all(model, 4, gen, n=5, bad=())
    assert {r["key"]: r["caption"] for r in out.rows} == one_at_a_time(model, gen, n=5, bad=())
    plain = one_at_a_time(model, {**gen, "repetition_penalty": 1.0}, n=5, bad=())
    assert plain != {r["key"]: r["caption"] for r in out.rows}


def test_beam_search_keeps_static_batches(model):
    gen = dict(max_new_tokens=6, num_beams=2, do_sample=False, stop_strings=STOPS)
    out, captioner = caption_all(model, 2, gen, n=3, bad=(1,))
    assert not captioner.continuous and [r["key"] for r in out.rows] == ["k0", "k1", "k2"]
    pixels = torch.stack([PROC(draw_scene(i)) for i in (0, 2)])
    assert [out.rows[0]["caption"], out.rows[2]["caption"]] == model.generate(pixels, [PROMPTS[0]] * 2, **gen)
    with pytest.raises(ValueError, match="one beam"):
        Captioner(model, PROC, Rows(), prompt_for, 2, gen, continuous=True)


def test_greedy_selection_applies_the_penalty_to_the_row_history():
    logits = torch.tensor([[2.0, 1.9, 0.0]])
    history = [torch.tensor([[0]])]
    assert select_tokens(logits, [SamplingParams()], [None], history) == [0]
    assert select_tokens(logits, [SamplingParams(repetition_penalty=2.0)], [None], history) == [1]
    with pytest.raises(ValueError, match="repetition_penalty"):
        SamplingParams(repetition_penalty=0)
