"""The ``hf`` fixer with the golden fixture's tiny Llama folder: the paper's prompt, plain or through a chat
template, greedy and batched, inside the fix stage; a missing folder names its key."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.curate_helpers import PARAGRAPH, config, described_workdir, one_per_key
from minigpt4 import curate
from minigpt4.curate.config import FIX_PROMPT
from minigpt4.curate.fix_hf import HFFixer

LLM = Path(__file__).parent / "fixtures" / "minigpt4_tiny" / "llm"
CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
NO_SYSTEM = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}"
             "{% endif %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] ")


def fixer(model_dir, **over):
    cfg = config(Path("unused"), f"fix.hf.model={model_dir}", "fix.hf.max_new_tokens=12", "fix.hf.batch_size=2",
                 *[f"fix.hf.{k}={v}" for k, v in over.items()])
    return HFFixer(cfg.fix.hf, cfg.fix.prompt)


def with_template(tmp_path, template) -> Path:
    folder = tmp_path / "llm"
    shutil.copytree(LLM, folder)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.chat_template = template
    tok.save_pretrained(str(folder))
    return folder


def test_plain_prompt_greedy_and_batched():
    f = fixer(LLM)
    assert not getattr(f.tokenizer, "chat_template", None)
    assert f.render("A dog.") == f"{FIX_PROMPT}\n\nParagraph: A dog.\n\nFixed paragraph:"
    items = [(f"k{i}", PARAGRAPH.format(c)) for i, c in enumerate(["red", "blue", "green"])]
    batched = {r.key: r for r in f.fix(items)}
    assert set(batched) == {"k0", "k1", "k2"}
    one_by_one = {key: next(iter(fixer(LLM, batch_size=1).fix([(key, text)]))) for key, text in items}
    for key in batched:
        assert batched[key].text == one_by_one[key].text  # left padding: a batch answers as single rows
        assert batched[key].error is None and batched[key].text == batched[key].reply
    assert f.stats()["completion_tokens"] > 0


def test_chat_template_with_and_without_system_role(tmp_path):
    f = fixer(with_template(tmp_path / "a", CHAT))
    assert f.render("A dog.") == f"<|system|>{FIX_PROMPT}\n<|user|>A dog.\n<|assistant|>"
    assert len(list(f.fix([("k", "A dog.")]))) == 1
    g = fixer(with_template(tmp_path / "b", NO_SYSTEM))
    assert g.render("A dog.") == f"[user] {FIX_PROMPT}\n\nA dog.\n[assistant] "


def test_hf_fixer_in_the_fix_stage(tmp_path):
    texts = {f"k{i}": PARAGRAPH.format(c) for i, c in enumerate(["red", "blue", "green"])}
    work = described_workdir(tmp_path, texts)
    cfg = config(work, "fix.fixer=hf", f"fix.hf.model={LLM}", "fix.hf.max_new_tokens=12")
    result = curate.run(cfg, stages="fix,filter")
    fixed = one_per_key(work / "fixed.jsonl")
    assert set(fixed) == set(texts) and all(r["fixer"] == "hf" for r in fixed.values())
    assert result["summary"]["fixed"] + result["summary"]["fix_failures"] == 3
    assert result["summary"]["fix_usage"]["fixer"] == "hf"


def test_missing_model_folder_names_the_key(tmp_path):
    with pytest.raises(curate.CurateError, match=r"curate\.fix\.hf\.model: .*nowhere does not exist"):
        fixer(tmp_path / "nowhere")
    with pytest.raises(curate.CurateError, match=r"curate\.fix\.hf\.model is not set; it must point at a local "
                                                 r"Hugging Face causal-LM folder"):
        HFFixer(config(tmp_path).fix.hf, FIX_PROMPT)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(curate.CurateError, match=r"curate\.fix\.hf\.model .*weights\.bin: is a file; it must point "
                                                 r"at a local Hugging Face causal-LM folder"):
        fixer(tmp_path / "weights.bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(curate.CurateError, match=r"curate\.fix\.hf\.model .*empty: no config\.json"):
        fixer(tmp_path / "empty")


def test_openai_fixer_against_a_loopback_server_running_the_same_llm(tmp_path, monkeypatch):
    """A real HTTP server whose answers come from the tiny Llama: the openai fixer gets what the hf fixer gets."""
    from minigpt4.testing.openai_server import ChatServer

    pytest.importorskip("openai")
    local = fixer(LLM)

    def backend(messages):
        assert messages[0] == {"role": "system", "content": FIX_PROMPT}
        return local._generate([messages[1]["content"]])[0]

    texts = {f"k{i}": PARAGRAPH.format(c) for i, c in enumerate(["red", "blue", "green", "pink"])}
    direct = {r.key: r.text for r in fixer(LLM).fix(list(texts.items()))}
    work = described_workdir(tmp_path, texts)
    monkeypatch.setenv("LOOPBACK_KEY", "local")
    with ChatServer(backend=backend) as server:
        cfg = config(work, "fix.fixer=openai", f"fix.openai.base_url={server.base_url}",
                     "fix.openai.api_key_env=LOOPBACK_KEY", "fix.openai.concurrency=2")
        curate.run(cfg, stages="fix")
    fixed = one_per_key(work / "fixed.jsonl")
    assert {k: r["text"] for k, r in fixed.items()} == {k: v.strip() for k, v in direct.items()}
    assert len(server.requests) == 4
