"""The continuous-batching engine: same tokens alone or in any batch, rows joining and leaving, isolation."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from minigpt4.testing.golden import FIXTURES, model_cfg
from minigpt4.testing.golden import draw_scene
from minigpt4.conversation import Chat, training_conversation
from minigpt4.generation import Engine, Failed, Finished, Piece, QueueFull, Request, SamplingParams, generate_all
from minigpt4.generation.batch import KVBatch
from minigpt4.models import MiniGPT4
from minigpt4.processors import Blip2ImageEvalProcessor

FX = FIXTURES / "minigpt4_tiny"
PROC = Blip2ImageEvalProcessor(image_size=224)
STOPS = ("###",)


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return MiniGPT4.from_config(model_cfg(FX))


def prompt(question="What is it?"):
    conv = training_conversation()
    conv.append_message(conv.roles[0], f"<Img><ImageHere></Img> {question}")
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def requests(n, **params):
    """Requests with different images, questions and lengths (so rows finish at different steps)."""
    out = []
    for i in range(n):
        sp = SamplingParams(**{"max_new_tokens": 6 + 5 * (i % 4), "stop_strings": STOPS, **params})
        question = "What is it?" if i % 2 else "Describe this image in detail please."
        out.append(Request(prompt(question), PROC(draw_scene(i)).unsqueeze(0), sp))
    return out


def texts(results):
    assert all(isinstance(r, Finished) for r in results), results
    return [(r.text, r.ids, r.finish_reason) for r in results]


def test_same_tokens_alone_batched_and_with_refill(model):
    alone = texts(generate_all(model, requests(7), max_batch_size=1))
    assert len({t for t, _, _ in alone}) > 1
    assert texts(generate_all(model, requests(7), max_batch_size=7)) == alone
    assert texts(generate_all(model, requests(7), max_batch_size=3)) == alone  # finished rows refilled


def test_greedy_equals_generate_ids_and_chat(model):
    chat = Chat(model, PROC, device="cpu")
    conv, images = training_conversation(), []
    chat.upload_img(draw_scene(2), conv, images)
    chat.ask("What is it?", conv)
    text, ids = chat.answer(conv, images, do_sample=False, max_new_tokens=20)
    [result] = generate_all(model, [Request(prompt(), PROC(draw_scene(2)).unsqueeze(0),
                                            SamplingParams(max_new_tokens=20, stop_strings=STOPS))])
    assert result.text == text
    assert result.ids == [int(i) for i in ids][: len(result.ids)]


def test_pieces_concatenate_to_the_final_text(model):
    reqs = requests(4, max_new_tokens=25)
    pieces = {id(r): [] for r in reqs}
    for r in reqs:
        r.sink = lambda ev, r=r: pieces[id(r)].append(ev.text + getattr(ev, "rest", "")) \
            if isinstance(ev, Piece) else pieces[id(r)].append(ev.rest)
    results = generate_all(model, reqs, max_batch_size=4)
    for r, res in zip(reqs, results):
        assert "".join(pieces[id(r)]) == res.text and len(pieces[id(r)]) > 2


def test_seeded_sampling_is_the_same_alone_and_in_a_batch(model):
    kw = dict(temperature=1.3, top_p=0.95, seed=11)
    alone = texts(generate_all(model, requests(3, **kw), max_batch_size=1))
    batched = texts(generate_all(model, requests(3, **kw), max_batch_size=3))
    assert alone == batched
    other = texts(generate_all(model, requests(3, **{**kw, "seed": 12}), max_batch_size=3))
    assert other != alone


def test_text_only_rows_and_image_rows_share_a_batch(model):
    reqs = requests(2) + [Request(training_conversation().prompt_template.format("Hello there"), None,
                                  SamplingParams(max_new_tokens=8, stop_strings=STOPS))]
    alone = texts(generate_all(model, reqs[:], max_batch_size=1))
    reqs = requests(2) + [Request(reqs[2].prompt, None, reqs[2].params)]
    assert texts(generate_all(model, reqs, max_batch_size=3)) == alone


def test_batch_trims_columns_nobody_attends(model):
    batch = KVBatch(model)
    embeds = torch.randn(2, 5, model.llama_proj.out_features)
    attention = torch.tensor([[0, 0, 0, 1, 1], [1, 1, 1, 1, 1]])
    _, joined = batch.prefill(embeds, attention)
    joined.set_last([3, 4])
    batch.merge(joined)
    batch.keep([0])
    assert batch.mask.tolist() == [[1, 1]] and batch.cache.layers[0].keys.shape[2] == 2


def test_engine_thread_queue_bound_cancel_and_failure_isolation(model):
    engine = Engine(model, max_batch_size=4, batch_window=0.01, max_queue=2)
    done = {}
    events = threading.Event()

    def sink_for(name):
        def sink(ev):
            if isinstance(ev, (Finished, Failed)):
                done[name] = ev
                if len(done) == 3:
                    events.set()
        return sink

    a, b, c = requests(3)
    bad = Request("no placeholder here", PROC(draw_scene(0)).unsqueeze(0), SamplingParams(max_new_tokens=4))
    a.sink, b.sink, bad.sink = sink_for("a"), sink_for("b"), sink_for("bad")
    engine.submit(a)
    engine.submit(bad)
    with pytest.raises(QueueFull):
        engine.submit(c)
    c.cancel()
    engine.start()
    for _ in range(3000):  # the engine thread takes the waiting requests
        if engine.waiting == 0:
            break
        time.sleep(0.01)
    engine.submit(b)
    assert events.wait(60)
    engine.stop()
    assert isinstance(done["bad"], Failed) and "ImageHere" in str(done["bad"].error)
    assert isinstance(done["a"], Finished) and isinstance(done["b"], Finished)
    reference = texts(generate_all(model, requests(2), max_batch_size=1))
    assert [(done[k].text, done[k].ids, done[k].finish_reason) for k in "ab"] == reference


def test_batch_window_waits_only_for_announced_requests(model):
    engine = Engine(model, max_batch_size=4, batch_window=60.0)
    admitted, finished = [], threading.Semaphore(0)
    admit = engine.scheduler.admit
    engine.scheduler.admit = lambda reqs: (admitted.append(len(reqs)) if reqs else None, admit(reqs))
    a, b, c = requests(3)
    for r in (a, b, c):
        r.sink = lambda ev: finished.release() if isinstance(ev, (Finished, Failed)) else None
    engine.start()
    engine.submit(a)  # nothing else announced: starts at once instead of waiting out the 60 s window
    assert finished.acquire(timeout=30)
    with engine.incoming():
        with engine.incoming():
            engine.submit(b)
            time.sleep(0.2)  # b waits in the window for the request still being prepared
            assert admitted == [1]
        engine.submit(c)
    assert finished.acquire(timeout=30) and finished.acquire(timeout=30)
    engine.stop()
    assert admitted == [1, 2]  # b and c shared one prefill
