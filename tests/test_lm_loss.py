"""Sequence packing and label-only logits give the faithful loss and gradients on the same samples."""
from __future__ import annotations

import itertools

import pytest
import torch

from fixture_utils import FIXTURES, inputs, model_cfg
from minigpt4.common.config import Config, ConfigError
from minigpt4.models import MiniGPT4
from minigpt4.models import lm_loss

FX = FIXTURES / "minigpt4_tiny"
# short and long captions mixed, as alt-texts are; one answer is cut by max_txt_len
CAPTIONS = ["a cat", "a red circle next to a blue square on a white background, drawn with a thick pen and shaded",
            "dog", "a green triangle above a yellow bar"]
PROMPTS = ["###Human: <Img><ImageHere></Img> Describe this image. ###Assistant: ",
           "###Human: <Img><ImageHere></Img> Hi ###Assistant: "] * 2


@pytest.fixture(scope="module")
def model():
    m = MiniGPT4.from_config(model_cfg(FX, max_txt_len=20))
    m.train()
    return m


def loss_and_grad(model, samples, packing, label_only):
    model.sequence_packing, model.label_logits_only = packing, label_only
    try:
        model.zero_grad(set_to_none=True)
        out = model(samples)
        out["loss"].backward()
        grads = [p.grad.clone() for p in model.llama_proj.parameters()]
        return out["loss"].detach(), out["num_tokens"], grads
    finally:
        model.sequence_packing = model.label_logits_only = False


@pytest.mark.parametrize("with_prompts", [False, True], ids=["stage1", "stage2"])
def test_every_shortcut_equals_the_padded_loss_and_gradients(model, with_prompts):
    px = inputs(FX)["pixel_values"]
    with torch.no_grad():
        feats = model.encode_features(px.repeat(2, 1, 1, 1))
    samples = {"image_features": feats, "answer": CAPTIONS}
    if with_prompts:
        samples["instruction_input"] = PROMPTS
    ref_loss, ref_tokens, ref_grads = loss_and_grad(model, samples, False, False)
    for packing, label_only in itertools.product([False, True], repeat=2):
        if not (packing or label_only):
            continue
        loss, tokens, grads = loss_and_grad(model, samples, packing, label_only)
        assert abs(loss.item() - ref_loss.item()) <= 1e-6, (packing, label_only, loss, ref_loss)
        assert int(tokens) == int(ref_tokens)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5)


def test_packing_keeps_samples_apart():
    emb = torch.arange(2 * 4 * 1, dtype=torch.float).reshape(2, 4, 1)
    att = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    tgt = torch.tensor([[-100, 5, 6, -100], [-100, 7, -100, -100]])
    e, pos, t = lm_loss.pack_rows(emb, att, tgt)
    assert e.flatten().tolist() == [0, 1, 2, 4, 5]
    assert pos.tolist() == [[0, 1, 2, 0, 1]]
    assert t.tolist() == [[-100, 5, 6, -100, 7]]
    with pytest.raises(ValueError, match="right-padded"):
        lm_loss.pack_rows(emb, torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]]), tgt)


def test_bad_values_are_one_line_config_errors():
    for key in ("sequence_packing", "label_logits_only"):
        with pytest.raises(ConfigError, match=f"model.{key} must be bool"):
            Config.load(options=["model.arch=minigpt4", "model.llama_model=x", f"model.{key}=maybe"])
    with pytest.raises(ConfigError, match="model.sequence_packing_row_tokens"):
        Config.load(options=["model.arch=minigpt4", "model.llama_model=x", "model.sequence_packing_row_tokens=-1"])


def test_row_size_without_packing_is_refused():
    with pytest.raises(ConfigError, match="sequence_packing_row_tokens is set but model.sequence_packing is false"):
        MiniGPT4.from_config(model_cfg(FX, sequence_packing_row_tokens=64))


def test_packing_into_rows_first_fit_decreasing():
    emb = torch.arange(4 * 5, dtype=torch.float).reshape(4, 5, 1)
    att = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    tgt = torch.where(att.bool(), torch.arange(4 * 5).reshape(4, 5), torch.tensor(-100))
    e, pos, t = lm_loss.pack_rows(emb, att, tgt, row_tokens=3)  # rows of max(3, longest 5) = 5 tokens
    # sizes 2, 5, 3, 1 -> [5], [3, 2], [1] + a 4-token tail of zeros with its own positions
    assert e.shape == (3, 5, 1) and pos.shape == t.shape == (3, 5)
    assert e[:, :, 0].tolist() == [[5, 6, 7, 8, 9], [10, 11, 12, 0, 1], [15, 0, 0, 0, 0]]
    assert pos.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 0, 1], [0, 0, 1, 2, 3]]
    assert t.tolist() == [[5, 6, 7, 8, 9], [10, 11, 12, 0, 1], [15, -100, -100, -100, -100]]
    # every real token exactly once
    assert sorted(x for x in t.flatten().tolist() if x != -100) == sorted(tgt[att.bool()].tolist())


@pytest.mark.parametrize("row_tokens", [1, 80, 1000])  # one sample per row / 1-2 / all
def test_packed_rows_equal_the_padded_loss_and_gradients(model, row_tokens):
    px = inputs(FX)["pixel_values"]
    with torch.no_grad():
        feats = model.encode_features(px.repeat(2, 1, 1, 1))
    samples = {"image_features": feats, "answer": CAPTIONS, "instruction_input": PROMPTS}
    ref_loss, _, ref_grads = loss_and_grad(model, samples, False, False)
    model.packing_row_tokens = row_tokens
    try:
        for label_only in (False, True):
            loss, _, grads = loss_and_grad(model, samples, True, label_only)
            assert abs(loss.item() - ref_loss.item()) <= 1e-6, (row_tokens, label_only, loss, ref_loss)
            for g, r in zip(grads, ref_grads):
                torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5)
    finally:
        model.packing_row_tokens = 0
