"""The demo's event handlers without a browser: streaming, bad input, several images, restart."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from PIL import Image

from fixture_utils import model_cfg
from inference_config import FX, draw_scene
from minigpt4.conversation import Chat, training_conversation
from minigpt4.models import MiniGPT4
from minigpt4.processors import Blip2ImageEvalProcessor

ROOT = Path(__file__).resolve().parents[1]
GEN = dict(max_new_tokens=16, seed=3)


def load_demo_module():
    spec = importlib.util.spec_from_file_location("minigpt4_demo", ROOT / "demo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


demo = load_demo_module()


@pytest.fixture(scope="module")
def chat():
    model = MiniGPT4.from_config(model_cfg(FX))
    return Chat(model, Blip2ImageEvalProcessor(image_size=224), device="cpu")


@pytest.fixture()
def app(chat):
    return demo.DemoApp(chat, training_conversation(), max_image_pixels=300 * 300, **GEN)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    draw_scene(2).save(d / "a.png")
    draw_scene(5).save(d / "b.jpg")
    Image.new("RGB", (400, 400)).save(d / "huge.png")
    (d / "notes.png").write_text("not an image")
    return d


def warned(func, *args):
    with pytest.warns(UserWarning) as record:
        out = func(*args)
    return out, " ".join(str(w.message) for w in record)


def test_streamed_answer_grows_and_matches_chat(app, chat, pictures):
    session, text_update, shown = app.upload(str(pictures / "a.png"), None)
    assert text_update["interactive"] is True and shown == [{"role": "user", "content": "[image 1 uploaded]"}]
    box, session, shown = app.ask("  What is it?  ", session)
    assert box == "" and session.pending and shown[-1] == {"role": "user", "content": "What is it?"}
    states = [s[-1]["content"] for _, s in app.answer(session, 1, 1.0)]
    assert len(states) > 2 and all(b.startswith(a) for a, b in zip(states, states[1:-1]))

    conv, images = training_conversation(), []
    chat.upload_img(str(pictures / "a.png"), conv, images)
    chat.ask("What is it?", conv)
    expected, _ = chat.answer(conv, images, do_sample=True, temperature=1.0, **GEN)
    assert states[-1] == expected and session.conv.messages == conv.messages and not session.pending


def test_two_images_then_restart(app, pictures):
    session, _, _ = app.upload(str(pictures / "a.png"), None)
    session, _, shown = app.upload(str(pictures / "b.jpg"), session)
    assert len(session.images) == 2 and shown[-1]["content"] == "[image 2 uploaded]"
    _, session, _ = app.ask("Compare them.", session)
    *_, (session, shown) = app.answer(session, 1, 0.7)
    assert session.conv.get_prompt().count("<ImageHere>") == 2 and shown[-1]["role"] == "assistant"
    state, shown, image, box = app.restart()
    assert state is None and shown == [] and box["interactive"] is False


def test_bad_input_gets_a_message_and_changes_nothing(app, pictures):
    (box, session, shown), msg = warned(app.ask, "hello", None)
    assert session is None and shown == [] and "upload an image first" in msg
    (session, update, shown), msg = warned(app.upload, str(pictures / "notes.png"), None)
    assert session is None and update == {"__type__": "update"} and "not an image I can read" in msg
    (session, _, shown), msg = warned(app.upload, str(pictures / "huge.png"), None)
    assert session is None and "too large (400x400 pixels" in msg
    (session, _, shown), msg = warned(app.upload, None, None)
    assert session is None and "choose an image" in msg

    session, _, _ = app.upload(str(pictures / "a.png"), None)
    (box, session, shown), msg = warned(app.ask, "   ", session)
    assert "should not be empty" in msg and not session.pending and len(shown) == 1
    assert list(app.answer(session, 1, 1.0)) == [(session, shown)]  # nothing asked, nothing generated


def test_a_question_that_cannot_fit_is_explained(chat, pictures):
    small = demo.DemoApp(chat, training_conversation(), max_new_tokens=16, max_length=30)
    session, _, _ = small.upload(str(pictures / "a.png"), None)
    _, session, _ = small.ask("What is it?", session)
    with pytest.warns(UserWarning, match="newest turn alone needs"):
        *_, (session, shown) = small.answer(session, 1, 1.0)
    assert "too long" in shown[-1]["content"]
    assert session.conv.messages == [["Human", "<Img><ImageHere></Img>"]]  # the question was taken back


def test_loopback_by_default_and_share_opt_in():
    args = demo.parse_args(["--cfg-path", "x.yaml"])
    assert args.host == "127.0.0.1" and args.share is False
