"""The OpenAI-compatible server on the golden fixture model, driven with the official openai client."""
from __future__ import annotations

import concurrent.futures as cf
import json
import time

import httpx
import openai
import pytest
from PIL import Image

from minigpt4.testing.golden import draw_scene, write_config
from minigpt4 import inference
from minigpt4.conversation import Chat
from minigpt4.serve import cli
from minigpt4.serve.app import create_app
from tests.serve_utils import ServerThread, data_url

MAX_TOKENS = 12
GREEDY = dict(temperature=0, max_tokens=MAX_TOKENS)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    allowed = root / "allowed"
    allowed.mkdir()
    draw_scene(3).save(allowed / "scene.png")
    (allowed / "notes.txt").write_text("not an image")
    draw_scene(4).save(root / "outside.png")
    (allowed / "escape.png").symlink_to(root / "outside.png")
    return {"root": root, "allowed": allowed, "cfg": write_config(root)}


@pytest.fixture(scope="module")
def served(files):
    args = cli.parse_args(["--cfg-path", str(files["cfg"]), "--max-batch-size", "4", "--max-length", "300",
                           "--allow-local-dir", str(files["allowed"]), "--max-image-pixels", "250000",
                           "--max-request-mb", "1", "--threads", "1"])
    app, engine = cli.build(args, None)
    with ServerThread(app) as server:
        yield server, app, engine, args
    engine.stop()


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served[0].url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def chat(served, files):
    _, _, engine, args = served
    cfg = inference.load_config(args)
    return Chat(engine.scheduler.model, inference.vis_processor_from_config(cfg), device="cpu"), \
        inference.conversation_from_config(cfg.model)


def user(text, *images):
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(im)}} for im in images]
            + [{"type": "text", "text": text}]}


def chat_answer(chat, turns, max_new_tokens=MAX_TOKENS):
    """Chat.answer's greedy text for a conversation of (image or None, question, answer or None) turns."""
    chat, template = chat
    conv, img_list = template.copy(), []
    for image, question, answer in turns:
        if image is not None:
            chat.upload_img(image, conv, img_list)
        chat.ask(question, conv)
        if answer is not None:
            conv.append_message(conv.roles[1], answer)
    return chat.answer(conv, img_list, do_sample=False, max_new_tokens=max_new_tokens, max_length=300)[0]


def test_greedy_answer_equals_chat_answer_and_counts_usage(client, chat):
    reply = client.chat.completions.create(model="minigpt4", messages=[user("What is it?", draw_scene(0))],
                                           **GREEDY)
    assert reply.choices[0].message.content == chat_answer(chat, [(draw_scene(0), "What is it?", None)])
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.object == "chat.completion"
    prompt = chat[1].copy()
    chat[0].upload_img(draw_scene(0), prompt, [])
    chat[0].ask("What is it?", prompt)
    prompt.append_message(prompt.roles[1], None)
    assert reply.usage.prompt_tokens == chat[0].context_length(prompt.get_prompt(), 1)
    assert 1 <= reply.usage.completion_tokens <= MAX_TOKENS
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streamed_chunks_join_to_the_same_text(client, chat):
    messages = [user("Describe this image in detail.", draw_scene(1))]
    stream = client.chat.completions.create(model="minigpt4", messages=messages, stream=True,
                                            stream_options={"include_usage": True}, **GREEDY)
    chunks = list(stream)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert sum(1 for p in pieces if p) > 1
    assert "".join(pieces) == chat_answer(chat, [(draw_scene(1), "Describe this image in detail.", None)])
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens >= 1


def test_raw_event_stream_ends_with_done(served):
    body = {"messages": [user("What is it?", draw_scene(2))], "stream": True, **GREEDY}
    with httpx.stream("POST", served[0].url + "/v1/chat/completions", json=body, timeout=60) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in resp.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")


def test_multi_turn_history_and_a_system_message(client, chat):
    turns = [(draw_scene(5), "What is it?", "a shape"), (None, "And the colour?", "red"),
             (draw_scene(6), "And this one?", None)]
    messages = [user("What is it?", draw_scene(5)), {"role": "assistant", "content": "a shape"},
                {"role": "user", "content": "And the colour?"}, {"role": "assistant", "content": "red"},
                user("And this one?", draw_scene(6))]
    reply = client.chat.completions.create(model="minigpt4", messages=messages, **GREEDY)
    assert reply.choices[0].message.content == chat_answer(chat, turns)
    system = {"role": "system", "content": chat[1].system}  # the template's own system text: same prompt
    again = client.chat.completions.create(model="minigpt4", messages=[system] + messages, **GREEDY)
    assert again.choices[0].message.content == reply.choices[0].message.content


def test_a_local_file_from_the_allowed_directory(client, chat, files):
    url = (files["allowed"] / "scene.png").as_uri()
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": "What is it?"}]}]
    reply = client.chat.completions.create(model="minigpt4", messages=messages, **GREEDY)
    expected = chat_answer(chat, [(Image.open(files["allowed"] / "scene.png").convert("RGB"), "What is it?", None)])
    assert reply.choices[0].message.content == expected


def test_concurrent_clients_each_get_the_answer_about_their_own_image(client, chat):
    scenes = list(range(8))
    expected = [chat_answer(chat, [(draw_scene(i), "What is it?", None)]) for i in scenes]
    assert len(set(expected)) > 1  # the images lead to different answers

    def ask(i):
        reply = client.chat.completions.create(model="minigpt4", messages=[user("What is it?", draw_scene(i))],
                                               **GREEDY)
        return reply.choices[0].message.content

    with cf.ThreadPoolExecutor(len(scenes)) as pool:
        assert list(pool.map(ask, scenes)) == expected


def test_seeded_sampling_repeats_and_a_dropped_stream_frees_its_row(client, served):
    messages = [user("What is it?", draw_scene(7))]
    sample = dict(temperature=1.2, top_p=0.9, max_tokens=MAX_TOKENS)
    first = [client.chat.completions.create(model="minigpt4", messages=messages, seed=s, **sample)
             .choices[0].message.content for s in (3, 3, 4)]
    assert first[0] == first[1] and first[0] != first[2]
    engine = served[2]
    body = {"messages": messages, "stream": True, "temperature": 0, "max_tokens": 200}
    with httpx.stream("POST", served[0].url + "/v1/chat/completions", json=body, timeout=60) as resp:
        for line in resp.iter_lines():  # up to the first generated text, then the client goes away
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                break
    for _ in range(500):
        if engine.running == 0 and engine.waiting == 0:
            break
        time.sleep(0.02)
    assert engine.running == 0 and engine.waiting == 0
    reply = client.chat.completions.create(model="minigpt4", messages=messages, **GREEDY)
    assert reply.choices[0].message.content


def test_models_and_health(client, served):
    assert [m.id for m in client.models.list().data] == ["minigpt4"]
    health = httpx.get(served[0].url + "/health").json()
    assert health["status"] == "ok"


def _message(url):
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": "hi"}]}]


def _malformed(files):
    ok = [{"role": "user", "content": "hi"}]
    img = data_url(draw_scene(0))
    huge = data_url(Image.new("RGB", (1000, 1000), "white"))  # 1e6 pixels > the 250000 limit
    return [
        ("bad base64", {"messages": _message("data:image/png;base64,@@@not-base64@@@")}, 400, 'invalid_image'),
        ("base64 of text", {"messages": _message("data:image/png;base64,aGVsbG8gd29ybGQ=")}, 400, 'invalid_image'),
        ("not a data url", {"messages": _message("data:text/plain,hello")}, 400, 'invalid_image'),
        ("truncated png", {"messages": _message(img[:200])}, 400, 'invalid_image'),
        ("huge image", {"messages": _message(huge)}, 413, 'image_too_large'),
        ("path outside the allowed dir", {"messages": _message(str(files["root"] / "outside.png"))}, 400,
         'forbidden_path'),
        ("dot-dot escape", {"messages": _message("../outside.png")}, 400, 'forbidden_path'),
        ("symlink escape", {"messages": _message(str(files["allowed"] / "escape.png"))}, 400, 'forbidden_path'),
        ("missing local file", {"messages": _message(str(files["allowed"] / "nope.png"))}, 400, 'invalid_image'),
        ("local non-image", {"messages": _message(str(files["allowed"] / "notes.txt"))}, 400, 'invalid_image'),
        ("remote url", {"messages": _message("http://127.0.0.1:9/image.png")}, 400, 'remote_images_disabled'),
        ("ftp url", {"messages": _message("ftp://example.org/a.png")}, 400, 'invalid_image'),
        ("unknown field", {"messages": ok, "logit_bias": {"1": 5}}, 400, 'unknown_field'),
        ("unknown nested field", {"messages": [{"role": "user", "content": "hi", "extra": 1}]}, 400, 'unknown_field'),
        ("wrong type max_tokens", {"messages": ok, "max_tokens": "5"}, 400, 'invalid_value'),
        ("wrong type temperature", {"messages": ok, "temperature": "hot"}, 400, 'invalid_value'),
        ("wrong type content", {"messages": [{"role": "user", "content": 5}]}, 400, 'invalid_value'),
        ("wrong type stream", {"messages": ok, "stream": "yes"}, 400, 'invalid_value'),
        ("messages not a list", {"messages": "hi"}, 400, 'invalid_value'),
        ("empty messages", {"messages": []}, 400, 'invalid_value'),
        ("no messages", {"max_tokens": 5}, 400, 'invalid_value'),
        ("empty user text", {"messages": [{"role": "user", "content": ""}]}, 400, None),
        ("unknown role", {"messages": [{"role": "robot", "content": "hi"}]}, 400, 'invalid_value'),
        ("last message from the assistant", {"messages": ok + [{"role": "assistant", "content": "x"}]}, 400, None),
        ("late system message", {"messages": ok + [{"role": "system", "content": "x"}] + ok}, 400, None),
        ("n=2", {"messages": ok, "n": 2}, 400, 'unsupported_value'),
        ("max_tokens=0", {"messages": ok, "max_tokens": 0}, 400, 'invalid_value'),
        ("top_p=0", {"messages": ok, "top_p": 0}, 400, 'invalid_value'),
        ("top_p>1", {"messages": ok, "top_p": 1.5}, 400, 'invalid_value'),
        ("negative temperature", {"messages": ok, "temperature": -1}, 400, 'invalid_value'),
        ("too many stops", {"messages": ok, "stop": ["a", "b", "c", "d", "e"]}, 400, None),
        ("too-long context", {"messages": [{"role": "user", "content": "word " * 400}]}, 400,
         'context_length_exceeded'),
        ("max_tokens over the window", {"messages": ok, "max_tokens": 5000}, 400, 'context_length_exceeded'),
        ("body not an object", [1, 2], 400, None),
    ]


def test_malformed_requests_get_openai_errors_and_the_server_keeps_serving(served, files, client):
    url = served[0].url + "/v1/chat/completions"
    http = httpx.Client(timeout=30)
    for name, body, status, code in _malformed(files):
        resp = http.post(url, json=body)
        assert resp.status_code == status, (name, resp.text)
        err = resp.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"], name
        assert err["code"] == code, (name, err)
        assert err["type"] == "invalid_request_error", name
    for raw, status in [(b"{not json", 400), (b"x" * (2 * 1024 * 1024), 413)]:
        resp = http.post(url, content=raw, headers={"content-type": "application/json"})
        assert resp.status_code == status and "error" in resp.json()
    assert httpx.get(served[0].url + "/nowhere").json()["error"]["type"] == "not_found_error"
    with pytest.raises(openai.BadRequestError, match="only n=1"):
        client.chat.completions.create(model="minigpt4", messages=[{"role": "user", "content": "hi"}], n=2)
    assert httpx.get(served[0].url + "/health").json()["status"] == "ok"
    reply = client.chat.completions.create(model="minigpt4", messages=[user("What is it?", draw_scene(0))], **GREEDY)
    assert reply.choices[0].message.content


def test_out_of_range_numbers_and_too_deep_json_are_400s_naming_the_field(served):
    url, ok = served[0].url + "/v1/chat/completions", [{"role": "user", "content": "hi"}]
    http = httpx.Client(timeout=30)
    for seed in (2**64, -2**63 - 1):  # beyond what torch's generators accept
        for stream in (False, True):
            resp = http.post(url, json={"messages": ok, "seed": seed, "stream": stream, "max_tokens": 4})
            err = resp.json()["error"]
            assert resp.status_code == 400 and err["param"] == "seed" and err["message"].startswith("seed:"), \
                resp.text
    for field in ("temperature", "top_p"):
        for value in ("NaN", "Infinity"):
            raw = f'{{"messages": [{{"role": "user", "content": "hi"}}], "{field}": {value}}}'.encode()
            resp = http.post(url, content=raw, headers={"content-type": "application/json"})
            err = resp.json()["error"]
            assert resp.status_code == 400 and err["param"] == field and "finite number" in err["message"], resp.text
    for raw in (b"[" * 100_000, b"[" * 50_000 + b"]" * 50_000):
        resp = http.post(url, content=raw, headers={"content-type": "application/json"})
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json", resp.text
    for seed in (2**64 - 1, -2**63):  # torch's own bounds are served
        resp = http.post(url, json={"messages": ok, "seed": seed, "temperature": 1, "max_tokens": 4})
        assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"] is not None, resp.text


def test_api_key_and_a_full_queue(served):
    _, app, engine, _ = served
    routes = {r.path: r for r in app.routes}
    assert "/v1/chat/completions" in routes
    # a second app on the same engine, with a key and a queue that takes nothing
    from minigpt4.serve.app import ServeSettings

    chat = Chat(engine.scheduler.model, lambda im: None)
    from minigpt4.conversation import training_conversation
    from minigpt4.generation import Engine

    full = Engine(engine.scheduler.model, max_queue=0)  # never started: nothing is generated
    locked = create_app(chat, training_conversation(), full, ServeSettings(api_key="s3cret", max_length=300))
    with ServerThread(locked) as server:
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            resp = httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers)
            assert resp.status_code == 401 and resp.json()["error"]["type"] == "authentication_error"
        assert httpx.get(server.url + "/v1/models").status_code == 401
        resp = httpx.post(server.url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer s3cret"})
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "server_overloaded"
        keyed = openai.OpenAI(base_url=server.url + "/v1", api_key="s3cret", max_retries=0)
        assert [m.id for m in keyed.models.list().data] == ["minigpt4"]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0).models.list()


def test_cli_usage_errors_exit_with_status_2(files, monkeypatch, capsys):
    monkeypatch.delenv("MINIGPT4_TEST_KEY", raising=False)
    for argv, needle in [(["--api-key-env", "MINIGPT4_TEST_KEY"], "MINIGPT4_TEST_KEY"),
                         (["--allow-local-dir", str(files["root"] / "missing")], "--allow-local-dir"),
                         (["--max-batch-size", "0"], "--max-batch-size"),
                         (["--max-queue", "0"], "--max-queue must be >= 1, got 0"),
                         (["--max-length", "-5"], "--max-length must be >= 2"),
                         (["--max-request-mb", "0"], "--max-request-mb must be a number > 0, got 0.0"),
                         (["--max-request-mb", "nan"], "--max-request-mb must be a number > 0, got nan"),
                         (["--max-image-mb", "-1"], "--max-image-mb must be a number > 0, got -1.0"),
                         (["--batch-window-ms", "inf"], "--batch-window-ms must be a number >= 0"),
                         (["--port", "99999"], "--port must be in 1..65535, got 99999"),
                         (["--threads", "-1"], "--threads must be >= 1, got -1"),
                         (["--threads", "0"], "--threads must be >= 1, got 0"),
                         (["--threads", str(2**40)], "--threads must be at most this machine's")]:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["--cfg-path", str(files["cfg"]), *argv])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and needle in err and err.count("\n") == 1, (argv, err)
    with pytest.raises(SystemExit) as exit_info:  # checked once the model (its tokenizer) is loaded
        cli.main(["--cfg-path", str(files["cfg"]), "--max-length", "5"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--max-length 5: the shortest request" in err and "Traceback" not in err
    monkeypatch.setenv("MINIGPT4_TEST_KEY", "k")
    assert cli.check_args(cli.parse_args(["--cfg-path", "x.yaml", "--api-key-env", "MINIGPT4_TEST_KEY"])) == "k"
    assert cli.parse_args(["--cfg-path", "x.yaml"]).host == "127.0.0.1"
