"""Stage-by-stage parity with the original implementation on its golden fixtures."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from fixture_utils import expected, fixture_dirs, inputs, model_cfg
from minigpt4.conversation.conversation import CONV_VISION_Vicuna0, Chat
from minigpt4.models import MiniGPT4
from minigpt4.models.prompting import IMAGE_MARKER
from minigpt4.processors import Blip2ImageEvalProcessor

ATOL = RTOL = 1e-4


@pytest.fixture(scope="module", params=fixture_dirs(), ids=lambda p: p.name)
def fx(request):
    return request.param


@pytest.fixture(scope="module")
def model(fx):
    return MiniGPT4.from_config(model_cfg(fx))


def close(a, b, atol=ATOL, rtol=RTOL):
    torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=rtol)


def test_preprocessing(fx):
    inp = inputs(fx)
    proc = Blip2ImageEvalProcessor(image_size=inp["pixel_values"].shape[-1])
    for i, name in enumerate(inp["image_files"]):
        pixels = proc(Image.open(fx / name).convert("RGB"))
        close(pixels, inp["pixel_values"][i], atol=1e-6, rtol=0)


def test_vision_path(fx, model):
    e, px = expected(fx), inputs(fx)["pixel_values"]
    with torch.no_grad():
        image_embeds = model.vision.image_embeds(px)
        queries = model.vision.features_from_embeds(image_embeds)
        projected, atts = model.encode_img(px)
    close(image_embeds, e["image_embeds"])
    close(queries, e["qformer_last_hidden_state"])
    close(projected, e["inputs_llama"])
    assert atts.shape == projected.shape[:2] and bool((atts == 1).all())


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_training_forward(fx, model, stage):
    e, inp = expected(fx)[stage], inputs(fx)
    model.prompt_list = [e["prompt"]] if e["prompt"] else []
    model.end_sym, model.max_txt_len = e["end_sym"], e["max_txt_len"]
    captions = inp["captions_stage1"] if stage == "stage1" else inp["captions_raw"]
    samples = {"image": inp["pixel_values"], "answer": captions}
    assert model.llama_tokenizer.pad_token_id == e["pad_token_id"]
    assert model.llama_tokenizer.bos_token_id == e["bos_token_id"]
    with torch.no_grad():
        batch = model.training_inputs(samples)
        layout = batch["layout"].clone()
        layout[layout == IMAGE_MARKER] = e["image_marker"]
        assert layout.tolist() == e["layout_ids"].tolist()
        assert batch["attention_mask"].tolist() == e["attention_mask"].tolist()
        assert batch["labels"].tolist() == e["labels"].tolist()
        close(batch["inputs_embeds"], e["inputs_embeds"])
        logits = model.llama_model(inputs_embeds=batch["inputs_embeds"],
                                   attention_mask=batch["attention_mask"]).logits
        close(logits, e["logits"])
        assert logits.argmax(-1).tolist() == e["argmax"].tolist()
        close(torch.logsumexp(logits.double(), -1), e["logsumexp"])
        loss = model(samples)["loss"]
        per_sample = model(samples, reduction="none")["loss"]
    close(loss, e["loss"], atol=1e-5, rtol=1e-5)
    close(per_sample, e["loss_reduction_none"], atol=1e-5, rtol=1e-5)


def test_chat_generation_greedy(fx, model):
    g, inp = expected(fx)["generation"], inputs(fx)
    assert CONV_VISION_Vicuna0.system == g["system"]
    assert list(CONV_VISION_Vicuna0.roles) == list(g["roles"]) and CONV_VISION_Vicuna0.sep == g["sep"]
    size = inp["pixel_values"].shape[-1]
    chat = Chat(model, Blip2ImageEvalProcessor(image_size=size), device="cpu")
    conv, img_list = CONV_VISION_Vicuna0.copy(), []
    image = Image.open(fx / inp["image_files"][g["image_index"]]).convert("RGB")
    assert chat.upload_img(image, conv, img_list) == "Received."
    close(img_list[0], g["image_embeds"])
    chat.ask(g["question"], conv)
    conv.append_message(conv.roles[1], None)
    assert conv.get_prompt() == g["prompt"]
    embeds, _ = chat.context(conv, img_list)
    layout, _ = model.context_layout([g["prompt"]], [1])
    segs = [s.tolist() for s in g["prompt_segment_ids"]]
    n_img = img_list[0].shape[1]
    assert layout[0].tolist() == segs[0] + [IMAGE_MARKER] * n_img + segs[1]
    close(embeds, g["context_embeds"])
    conv.messages.pop()
    text, ids = chat.answer(conv, img_list, max_new_tokens=g["max_new_tokens"], num_beams=g["num_beams"],
                            max_length=2000, do_sample=False)
    assert ids.tolist() == g["generated_ids"].tolist()
    assert text == g["answer_text"]
    assert conv.messages == [list(m) for m in g["conv_messages_after"]]
