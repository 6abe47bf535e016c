"""The terminal chat: streamed answers, /image, /reset, /quit, clear refusals."""
from __future__ import annotations

import io
import re

import pytest

from inference_config import FX, draw_scene, write_config
from minigpt4 import chat as chat_cli
from minigpt4.conversation import Chat, training_conversation
from minigpt4.models import MiniGPT4
from minigpt4.processors import Blip2ImageEvalProcessor
from fixture_utils import model_cfg


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
