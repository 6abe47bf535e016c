"""Chat beyond the original: streaming, several images, turn-wise truncation, seeds, template stops."""
from __future__ import annotations

import time

import pytest
import torch
from PIL import Image

from minigpt4.testing.golden import FIXTURES, inputs, model_cfg
from minigpt4.conversation import (
    CONV_VISION_LLama2,
    CONV_VISION_Vicuna0,
    Chat,
    ContextTooLongError,
    GenerationSettingsError,
    load_image,
    training_conversation,
)
from minigpt4.conversation.history import turn_starts
from minigpt4.conversation.streaming import GenerationCancelled, StopFilter, stream_generation
from minigpt4.models import MiniGPT4
from minigpt4.models.prompting import IMAGE_MARKER
from minigpt4.processors import Blip2ImageEvalProcessor

FX = FIXTURES / "minigpt4_tiny"
GREEDY = dict(do_sample=False, max_new_tokens=16)


@pytest.fixture(scope="module")
def chat():
    model = MiniGPT4.from_config(model_cfg(FX))
    return Chat(model, Blip2ImageEvalProcessor(image_size=224), device="cpu")


def images():
    return [Image.open(FX / name).convert("RGB") for name in inputs(FX)["image_files"]]


def started(chat, conv, question="Describe this image in detail.", image=0):
    conv, img_list = conv.copy(), []
    chat.upload_img(images()[image], conv, img_list)
    chat.ask(question, conv)
    return conv, img_list


def test_stream_pieces_join_to_the_stored_answer(chat):
    conv, img_list = started(chat, CONV_VISION_Vicuna0)
    reference = conv.copy()
    text, _ = chat.answer(reference, list(img_list), **GREEDY)
    pieces = list(chat.stream_answer(conv, img_list, **GREEDY))
    assert len(pieces) > 1 and "".join(pieces) == text
    assert conv.messages == reference.messages and conv.messages[-1] == [conv.roles[1], text]


def test_same_seed_same_sample_other_seed_other_sample(chat):
    kw = dict(do_sample=True, temperature=1.5, top_p=1.0, max_new_tokens=16)
    texts = []
    for seed in (7, 7, 8):
        conv, img_list = started(chat, CONV_VISION_Vicuna0)
        texts.append("".join(chat.stream_answer(conv, img_list, seed=seed, **kw)))
    conv, img_list = started(chat, CONV_VISION_Vicuna0)
    assert chat.answer(conv, img_list, seed=7, **kw)[0] == texts[0]
    assert texts[0] == texts[1] and texts[0] != texts[2]


def test_two_images_in_one_conversation(chat):
    conv, img_list = CONV_VISION_Vicuna0.copy(), []
    chat.upload_img(images()[0], conv, img_list)
    chat.upload_img(images()[1], conv, img_list)
    chat.ask("Compare them.", conv)
    conv.append_message(conv.roles[1], None)
    assert conv.get_prompt().count("<Img><ImageHere></Img>") == 2 and len(img_list) == 2
    embeds, _ = chat.context(conv, img_list)
    layout, _ = chat.model.context_layout([conv.get_prompt()], [2])
    marked = embeds[0][layout[0] == IMAGE_MARKER]
    torch.testing.assert_close(marked, torch.cat([img_list[0][0], img_list[1][0]]))
    conv.messages.pop()
    text, _ = chat.answer(conv, img_list, **GREEDY)
    assert conv.messages[-1][1] == text


def test_consecutive_images_share_one_training_template():
    conv = training_conversation()
    conv.append_message(conv.roles[0], "<Img><ImageHere></Img>")
    conv.append_message(conv.roles[0], "<Img><ImageHere></Img> Compare them.")
    conv.append_message(conv.roles[1], None)
    assert conv.get_prompt() == "###Human: <Img><ImageHere></Img> <Img><ImageHere></Img> Compare them. ###Assistant: "


def _history(chat, turns: int):
    """A Vicuna v0 conversation with ``turns`` answered turns, each with its own image."""
    conv, img_list = CONV_VISION_Vicuna0.copy(), []
    for i in range(turns):
        chat.upload_img(images()[i % 2], conv, img_list)
        chat.ask(f"question number {i}?", conv)
        conv.append_message(conv.roles[1], f"answer number {i}")
    chat.ask("and now?", conv)
    return conv, img_list


def test_oldest_turns_are_dropped_whole(chat):
    conv, img_list = _history(chat, 3)
    conv.append_message(conv.roles[1], None)
    full = chat.context_length(conv.get_prompt(), 3)
    newest_two = conv.copy()
    newest_two.messages = conv.messages[turn_starts(conv.messages, conv.roles[0])[2]:]
    need = chat.context_length(newest_two.get_prompt(), 1)
    assert need < full
    embeds, attention = chat.context(conv, img_list, budget=need)
    assert embeds.shape[1] == need and bool(attention.all())
    expected, _ = chat.context(newest_two, img_list[2:])
    torch.testing.assert_close(embeds, expected)
    bos = chat.model.embed_tokens(torch.tensor([chat.model.llama_tokenizer.bos_token_id]))
    torch.testing.assert_close(embeds[0, :1], bos)
    assert newest_two.get_prompt().startswith(CONV_VISION_Vicuna0.system + "###Human: <Img><ImageHere></Img> "
                                              "question number 2?")


def test_answer_keeps_the_history_and_fits_a_small_window(chat):
    conv, img_list = _history(chat, 3)
    before = [list(m) for m in conv.messages]
    newest = conv.copy()
    newest.messages = conv.messages[turn_starts(conv.messages, conv.roles[0])[-1]:] + [[conv.roles[1], None]]
    need = chat.context_length(newest.get_prompt(), 0)
    text, _ = chat.answer(conv, img_list, max_length=need + 8, **{**GREEDY, "max_new_tokens": 8})
    assert conv.messages[:-1] == before and conv.messages[-1] == [conv.roles[1], text] and len(img_list) == 3


def test_a_turn_that_cannot_fit_is_a_clear_error_and_changes_nothing(chat):
    conv, img_list = _history(chat, 1)
    before = [list(m) for m in conv.messages]
    with pytest.raises(ContextTooLongError, match="newest turn alone needs"):
        chat.answer(conv, img_list, max_length=40, **GREEDY)
    with pytest.raises(ContextTooLongError):
        list(chat.stream_answer(conv, img_list, max_length=40, **GREEDY))
    assert conv.messages == before


def test_template_stop_strings():
    assert Chat.stop_strings(CONV_VISION_Vicuna0) == ["###"]
    assert Chat.stop_strings(CONV_VISION_LLama2) == []  # EOS
    assert Chat.stop_strings(training_conversation("[INST] {} [/INST] ", "</s>")) == ["</s>"]
    assert Chat.stop_strings(training_conversation(end_sym="\n")) == []


def test_answer_and_stream_stop_at_the_templates_end_sym(chat):
    conv, img_list = started(chat, training_conversation(end_sym="###"))
    free, _ = chat.answer(conv.copy(), list(img_list), **GREEDY)
    stop = next(w for w in free.split()[1:] if len(w) > 1)
    conv, img_list = started(chat, training_conversation(end_sym=stop))
    text, ids = chat.answer(conv.copy(), list(img_list), **GREEDY)
    assert stop not in text and text == free[: free.index(stop)].strip()
    assert len(ids) < GREEDY["max_new_tokens"]  # generation itself stopped, not just the text
    assert "".join(chat.stream_answer(conv, img_list, **GREEDY)) == text


def test_stream_failure_is_raised_and_the_turn_undone(chat, monkeypatch):
    conv, img_list = started(chat, CONV_VISION_Vicuna0)
    before = [list(m) for m in conv.messages]

    def boom(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(chat.model, "generate_ids", boom)
    with pytest.raises(RuntimeError, match="out of memory"):
        list(chat.stream_answer(conv, img_list, **GREEDY))
    assert conv.messages == before


def test_stop_filter_holds_back_partial_stops_and_whitespace():
    f = StopFilter(["###"])
    out = [f.feed(p) for p in [" A", " red", " #", "#", "x", " ci", "rcle ##", "# more"]]
    assert out == ["A", " red", "", "", " ##x", " ci", "rcle", ""]
    assert "".join(out) + f.flush() == "A red ##x circle"
    g = StopFilter(["</s>"])
    assert g.feed("hi </") == "hi" and g.flush() == " </"


def test_unreadable_image_names_the_file(tmp_path, chat):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match="notes.jpg: not a readable image"):
        load_image(bad)
    with pytest.raises(ValueError, match="notes.jpg"):
        chat.upload_img(str(bad), CONV_VISION_Vicuna0.copy(), [])


def test_beam_search_answers_in_one_piece(chat):
    kw = dict(num_beams=3, do_sample=True, seed=0, max_new_tokens=10)
    conv, img_list = started(chat, training_conversation())
    pieces = list(chat.stream_answer(conv, img_list, **kw))
    again, imgs = started(chat, training_conversation())
    assert pieces == [chat.answer(again, imgs, **kw)[0]] and conv.messages == again.messages


def test_a_stream_closed_early_leaves_no_half_turn(chat):
    conv, img_list = started(chat, CONV_VISION_Vicuna0)
    before = [list(m) for m in conv.messages]
    stream = chat.stream_answer(conv, img_list, **GREEDY)
    next(stream)
    stream.close()
    assert conv.messages == before


def test_closing_a_stream_stops_generate_at_its_next_token(chat):
    tokenizer = chat.model.llama_tokenizer
    word = tokenizer(" red", add_special_tokens=False, return_tensors="pt").input_ids
    seen = {"puts": 0, "error": None}

    def generate(streamer):
        streamer.put(torch.tensor([[1]]))  # the prompt, skipped by the streamer
        try:
            for _ in range(500):
                streamer.put(word[0])
                seen["puts"] += 1
                time.sleep(0.002)
        except GenerationCancelled as exc:
            seen["error"] = exc
            raise
        streamer.end()

    stream = stream_generation(tokenizer, generate, [])
    assert next(stream).strip().startswith("red")
    stream.close()  # returns once generate has stopped
    assert isinstance(seen["error"], GenerationCancelled) and seen["puts"] < 500


def test_image_here_typed_by_the_user_is_text(chat):
    conv, img_list = started(chat, training_conversation(), question="Is <ImageHere> a word?")
    assert conv.get_prompt().count("<ImageHere>") == 1  # only the uploaded image's slot
    assert "<\u200bImageHere>" in conv.get_prompt()
    text, _ = chat.answer(conv, img_list, **GREEDY)
    assert conv.messages[-1] == ["Assistant", text]


@pytest.mark.parametrize("setting, value", [("num_beams", 0), ("max_new_tokens", 0), ("top_p", 2.0), ("top_p", 0.0),
                                            ("temperature", 0.0), ("temperature", -1.0), ("num_beams", 1.5)])
def test_generation_settings_out_of_range_are_refused_by_name(chat, setting, value):
    conv, img_list = started(chat, CONV_VISION_Vicuna0)
    before = [list(m) for m in conv.messages]
    kwargs = {**GREEDY, setting: value}
    with pytest.raises(GenerationSettingsError, match=f"^{setting} must be"):
        chat.answer(conv, img_list, **kwargs)
    with pytest.raises(GenerationSettingsError, match=f"^{setting} must be"):
        list(chat.stream_answer(conv, img_list, **kwargs))
    assert conv.messages == before


def test_a_missing_image_file_is_named_as_missing(tmp_path, chat):
    with pytest.raises(ValueError, match=r"^no such file: .*nope\.jpg$"):
        chat.upload_img(str(tmp_path / "nope.jpg"), CONV_VISION_Vicuna0.copy(), [])
    with pytest.raises(ValueError, match="is a folder"):
        load_image(tmp_path)
