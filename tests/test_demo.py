"""The demo's event handlers without a browser: streaming, bad input, several images, restart."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from PIL import Image

from minigpt4.testing.golden import model_cfg
from minigpt4.testing.golden import FX, draw_scene
from minigpt4 import demo_app
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
    return demo_app.DemoApp(chat, training_conversation(), max_image_pixels=300 * 300, **GEN)


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
    small = demo_app.DemoApp(chat, training_conversation(), max_new_tokens=16, max_length=30)
    session, _, _ = small.upload(str(pictures / "a.png"), None)
    _, session, _ = small.ask("What is it?", session)
    with pytest.warns(UserWarning, match="newest turn alone needs"):
        *_, (session, shown) = small.answer(session, 1, 1.0)
    assert "too long" in shown[-1]["content"]
    assert session.conv.messages == [["Human", "<Img><ImageHere></Img>"]]  # the question was taken back


def test_loopback_by_default_and_share_opt_in():
    args = demo.parse_args(["--cfg-path", "x.yaml"])
    assert args.host == "127.0.0.1" and args.share is False


def test_restart_while_an_answer_streams_stops_it_and_the_old_conversation_stays_gone(chat, pictures):
    app = demo_app.DemoApp(chat, training_conversation(), max_new_tokens=40, seed=3)
    session, _, _ = app.upload(str(pictures / "a.png"), None)
    _, session, _ = app.ask("What is it?", session)
    stream = app.answer(session, 1, 1.0)
    first_session, first_shown = next(stream)  # the answer is streaming
    assert first_session is session and first_shown[-1]["role"] == "assistant"
    state, shown, _, box = app.restart(session)
    assert state is None and shown == [] and session.closed
    assert list(stream) == []  # nothing more is yielded, so the old session cannot come back
    # even if a late yield had put the closed session back, it is not continued
    (_, again, shown), msg = warned(app.ask, "And now?", session)
    assert again is None and shown == [] and "upload an image first" in msg
    fresh, _, shown = app.upload(str(pictures / "b.jpg"), session)
    assert fresh is not session and len(fresh.images) == 1 and shown == [{"role": "user",
                                                                          "content": "[image 1 uploaded]"}]
    assert fresh.conv.messages == [["Human", "<Img><ImageHere></Img>"]]


def test_a_rebuilt_image_component_still_lets_bad_uploads_through(pictures):
    from gradio.data_classes import ImageData

    image = demo_app.TolerantImage(type="filepath", image_mode=None, sources=["upload"], render=False)
    rebuilt = image.__class__(**{**image.constructor_args, "render": False})  # what Gradio does on an update
    payload = ImageData(path=str(pictures / "notes.png"), orig_name="notes.png")
    for component in (image, rebuilt):
        assert component.get_block_name() == "image"
        assert component.preprocess(payload) == str(pictures / "notes.png")


@pytest.mark.parametrize("flags, named", [(["--max-new-tokens", "0"], "--max-new-tokens must be"),
                                          (["--max-length", "300"], "--max-length must be"),
                                          (["--port", "0"], "--port must be"),
                                          (["--port", "99999"], "--port must be in 1..65535, got 99999"),
                                          (["--max-queue", "0"], "--max-queue must be >= 1"),
                                          (["--max-file-size", "abc"], "--max-file-size must be"),
                                          (["--max-file-size=-5mb"], "--max-file-size must be"),
                                          (["--max-file-size", "0"], "--max-file-size must be"),
                                          (["--max-file-size", "5 parsecs"], "--max-file-size must be"),
                                          (["--seed", str(2**64)], "--seed must be a whole number in"),
                                          (["--seed", str(-2**63 - 1)], "--seed must be a whole number in")])
def test_bad_settings_are_refused_before_loading(flags, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--cfg-path", "never-read.yaml", *flags])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and named in err and err.count("\n") == 1, err


def test_upload_limits_in_gradio_units_and_seeds_at_torch_bounds(chat, pictures):
    assert [demo.file_size(text) for text in ("25mb", "1 GB", "512", "3kb")] == [25 * 1024**2, 1024**3, 512, 3072]
    for seed in (2**64 - 1, -2**63):  # what torch.manual_seed accepts is answered
        app = demo_app.DemoApp(chat, training_conversation(), max_new_tokens=4, seed=seed)
        session, _, _ = app.upload(str(pictures / "a.png"), None)
        _, session, _ = app.ask("What is it?", session)
        *_, (session, shown) = app.answer(session, 1, 1.0)
        assert shown[-1]["role"] == "assistant" and "failed" not in shown[-1]["content"]
