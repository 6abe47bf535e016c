"""The terminal chat: streamed answers, /image, /reset, /quit, clear refusals."""
from __future__ import annotations

import io
import re
import threading

import pytest

from minigpt4.testing.golden import FX, draw_scene, write_config
from minigpt4 import chat as chat_cli
from minigpt4.conversation import Chat, training_conversation
from minigpt4.models import MiniGPT4
from minigpt4.processors import Blip2ImageEvalProcessor
from minigpt4.testing.golden import model_cfg


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("chat_cli")
    draw_scene(1).save(d / "one.png")
    draw_scene(4).save(d / "two.png")
    (d / "bad.png").write_text("not a picture")
    write_config(d)
    return d


def talk(monkeypatch, capsys, files, lines, *extra):
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(f"{line}\n" for line in lines)))
    code = chat_cli.main(["--cfg-path", str(files / "fixture_eval.yaml"), "--image", str(files / "one.png"),
                          "--greedy", "--max-new-tokens", "12", *extra])
    return code, capsys.readouterr().out


def test_a_terminal_conversation(monkeypatch, capsys, files):
    code, out = talk(monkeypatch, capsys, files, [
        "Describe this image in detail.", "/image " + str(files / "bad.png"), "/image " + str(files / "two.png"),
        "And now?", "/nonsense", "/reset", "Anything?", "/image " + str(files / "two.png"), "", "What now?", "/quit",
        "never read"])
    assert code == 0
    answers = re.findall(r"MiniGPT-4: (.*)", out)
    assert len(answers) == 3 and all(answers)
    assert "[image 1 added" in out and "[image 2 added" in out
    assert "[could not add the image:" in out and "bad.png: not a readable image" in out
    assert "[unknown command /nonsense" in out
    assert "[conversation cleared" in out and "[no image in this conversation yet" in out

    model = MiniGPT4.from_config(model_cfg(FX, prompt_template="###Human: {} ###Assistant: ", end_sym="###"))
    chat = Chat(model, Blip2ImageEvalProcessor(image_size=224), device="cpu")
    conv, images = training_conversation(), []
    chat.upload_img(str(files / "one.png"), conv, images)
    chat.ask("Describe this image in detail.", conv)
    first, _ = chat.answer(conv, images, do_sample=False, max_new_tokens=12)
    chat.upload_img(str(files / "two.png"), conv, images)
    chat.ask("And now?", conv)
    second, _ = chat.answer(conv, images, do_sample=False, max_new_tokens=12)
    assert answers[:2] == [first, second]


def test_an_unreadable_first_image_and_a_missing_config_exit_with_status_2(monkeypatch, capsys, files):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert chat_cli.main(["--cfg-path", str(files / "fixture_eval.yaml"), "--image", str(files / "bad.png")]) == 2
    with pytest.raises(SystemExit) as exit_info:
        chat_cli.main(["--cfg-path", str(files / "missing.yaml"), "--image", str(files / "one.png")])
    assert exit_info.value.code == 2 and "missing.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("flags, named", [(["--temperature", "0"], "--temperature must be > 0"),
                                          (["--num-beams", "0"], "--num-beams must be a whole number >= 1"),
                                          (["--max-new-tokens", "0"], "--max-new-tokens must be"),
                                          (["--top-p", "2"], "--top-p must be in (0, 1]"),
                                          (["--max-length", "12"], "--max-length must be"),
                                          (["--seed", str(2**64)], "--seed must be a whole number in"),
                                          (["--seed", str(-2**63 - 1)], "--seed must be a whole number in")])
def test_bad_generation_settings_are_refused_at_start_up(monkeypatch, capsys, files, flags, named):
    monkeypatch.setattr("sys.stdin", io.StringIO("never read\n"))
    with pytest.raises(SystemExit) as exit_info:
        chat_cli.main(["--cfg-path", str(files / "missing.yaml"), "--image", str(files / "one.png"), *flags])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and named in err and "missing.yaml" not in err  # before the config is read


def test_typed_image_placeholder_and_a_missing_file(monkeypatch, capsys, files):
    code, out = talk(monkeypatch, capsys, files, ["What is <ImageHere> in this?", "/image " + str(files / "nope.png")])
    assert code == 0 and len(re.findall(r"MiniGPT-4: (.+)", out)) == 1
    assert f"[could not add the image: no such file: {files / 'nope.png'}]" in out


class InterruptingOut(io.StringIO):
    """A terminal where the user presses Ctrl-C as soon as the first piece of the first answer appears."""

    def __init__(self):
        super().__init__()
        self.pressed = False

    def write(self, text):
        if not self.pressed and self.getvalue().endswith("MiniGPT-4: ") and text:
            self.pressed = True
            raise KeyboardInterrupt
        return super().write(text)


def test_ctrl_c_while_an_answer_streams_stops_only_that_answer(files):
    model = MiniGPT4.from_config(model_cfg(FX, prompt_template="###Human: {} ###Assistant: ", end_sym="###"))
    out = InterruptingOut()
    session = chat_cli.Session(Chat(model, Blip2ImageEvalProcessor(image_size=224), device="cpu"),
                               training_conversation(), dict(do_sample=False, max_new_tokens=12), out=out)
    assert session.add_image(str(files / "one.png"))
    before = [list(m) for m in session.conv.messages]
    assert session.handle("Describe this image in detail.") is True  # the session goes on
    assert out.pressed and "[answer stopped" in out.getvalue() and session.conv.messages == before
    assert not any(t.name == "minigpt4-generate" and t.is_alive() for t in threading.enumerate())
    assert session.handle("Describe this image in detail.") is True
    answer = out.getvalue().rsplit("MiniGPT-4: ", 1)[1].strip()
    assert answer and session.conv.messages[-1] == ["Assistant", answer]


def test_ctrl_c_at_the_prompt_only_clears_the_line(monkeypatch, capsys, files):
    typed = iter([KeyboardInterrupt, "/quit"])

    def fake_input(prompt=""):
        item = next(typed)
        if item is KeyboardInterrupt:
            raise KeyboardInterrupt
        return item

    monkeypatch.setattr("builtins.input", fake_input)
    code = chat_cli.main(["--cfg-path", str(files / "fixture_eval.yaml"), "--image", str(files / "one.png")])
    assert code == 0 and "[Ctrl-C: type /quit or press Ctrl-D to leave]" in capsys.readouterr().out


def test_loading_is_quiet_unless_verbose(monkeypatch, capsys, files):
    for extra, shown in (([], False), (["--verbose"], True)):
        monkeypatch.setattr("sys.stdin", io.StringIO("/quit\n"))
        assert chat_cli.main(["--cfg-path", str(files / "fixture_eval.yaml"), "--image", str(files / "one.png"),
                              *extra]) == 0
        assert ("Loading weights" in capsys.readouterr().err) is shown
