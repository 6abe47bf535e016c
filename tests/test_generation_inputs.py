"""The model's one generation input path and decode: embed_prompts, decode_answer, stop token ids."""
from __future__ import annotations

import pytest
import torch

from fixture_utils import FIXTURES, inputs, model_cfg
from minigpt4.generation import Request, SamplingParams, generate_all
from minigpt4.models import MiniGPT4
from minigpt4.models.prompting import embed_layout

FX = FIXTURES / "minigpt4_tiny"
PROMPT = "###Human: <Img><ImageHere></Img> What is it? ###Assistant: "


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return MiniGPT4.from_config(model_cfg(FX, end_sym="###")).eval()


def test_embed_prompts_is_the_layout_with_images_in_row_order(model):
    px = inputs(FX)["pixel_values"]
    images, _ = model.encode_img(px)
    embeds, attention = model.embed_prompts([PROMPT, None, "no image here"], images, [1, 1, 0])
    layout, expected_att = model.context_layout([PROMPT, "<ImageHere>", "no image here"], [1, 1, 0])
    torch.testing.assert_close(embeds, embed_layout(layout, images, model.embed_tokens))
    assert torch.equal(attention, expected_att) and attention[1].sum() < attention[0].sum()  # left-padded
    text_only, att = model.embed_prompts(["no image here"], None, [0])
    torch.testing.assert_close(text_only[0, -int(att.sum()):], embeds[2, -int(att.sum()):])
    with pytest.raises(ValueError, match="image positions"):
        model.embed_prompts([PROMPT], images, [1])


def test_decode_answer_says_whether_the_end_sym_ended_the_text(model):
    ids = model.llama_tokenizer("a red circle### more", add_special_tokens=False).input_ids
    eos = model.llama_tokenizer.eos_token_id
    assert model.decode_answer(ids) == ("a red circle", True)
    assert model.decode_answer(ids, stop_strings=[]) == ("a red circle### more", False)
    assert model.decode_answer(ids[:2] + [eos] + ids[2:]) == (model.decode_text(ids[:2]).strip(), False)
    assert model.decode_answer(ids, stop_strings=[], stop_token_ids=[ids[1]]) == (model.decode_text(ids[:1]).strip(),
                                                                                  True)
    assert model.decode(ids) == "a red circle"


def test_a_stop_token_id_ends_generate_and_the_engine_alike(model):
    px = inputs(FX)["pixel_values"][:1]
    free = model.generate_ids(*model.embed_prompts([PROMPT], model.encode_img(px)[0], [1]), max_new_tokens=10,
                              stop_strings=[])[0].tolist()
    stop = free[4]
    cut = free[: free.index(stop)]
    [(text, stopped)] = model.generate_answers(px, [PROMPT], max_new_tokens=10, stop_strings=[],
                                               stop_token_ids=[stop])
    assert stopped and text == model.decode_text(cut).strip()
    [done] = generate_all(model, [Request(PROMPT, px, SamplingParams(max_new_tokens=10, stop_token_ids=(stop,)))])
    assert done.text == text and done.ids == cut and done.finish_reason == "stop"
