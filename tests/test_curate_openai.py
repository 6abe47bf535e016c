"""The ``openai`` fixer against a real HTTP server on 127.0.0.1 that answers slowly, answers 500 or drops
the connection on purpose: retries as configured, then a failure row; concurrency limit; the API key
never written; a killed run resumes; bad endpoints and missing keys are one-line errors."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.curate_helpers import PARAGRAPH, config, described_workdir, kill_after_rows, one_per_key, rows
from minigpt4 import curate
from minigpt4.curate import __main__ as cli
from minigpt4.curate.config import FIX_PROMPT
from minigpt4.testing.openai_server import ChatServer, free_port

pytest.importorskip("openai")

ROOT = Path(__file__).resolve().parents[1]
KEY_ENV = "MINIGPT4_CURATE_TEST_KEY"
SECRET = "sk-test-RECOGNISABLE-7f3a9c1e5b2d"


def openai_options(server, *extra):
    return ["fix.fixer=openai", f"fix.openai.base_url={server.base_url}", f"fix.openai.api_key_env={KEY_ENV}",
            "fix.openai.model=test-model", "fix.openai.backoff_initial=0.01", "fix.openai.backoff_max=0.05",
            *extra]


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


def test_retries_then_failure_rows_and_filter_reasons(tmp_path):
    texts = {f"ok{i}": PARAGRAPH.format(c) for i, c in enumerate(["red", "blue", "green"])}
    texts.update({name: f"{PARAGRAPH.format('grey')} {name}" for name in
                  ["FAIL500", "FLAKY2", "DROP", "SLOW", "EMPTY", "SORRY", "CORRECT", "NOREPEAT", "UNFINISHED"]})
    work = described_workdir(tmp_path, texts)
    with ChatServer(slow_seconds=2.0) as server:
        cfg = config(work, *openai_options(server, "fix.openai.max_retries=2", "fix.openai.timeout=0.4",
                                           "fix.openai.concurrency=3", "fix.openai.price_per_input_token=0.001",
                                           "fix.openai.price_per_output_token=0.002"))
        result = curate.run(cfg, stages="fix,filter,export")
    fixed = one_per_key(work / "fixed.jsonl")
    assert set(fixed) == set(texts)  # no row lost, none twice
    attempts = {m: server.count(m) for m in ["FAIL500", "FLAKY2", "DROP", "SLOW", "EMPTY"]}
    assert attempts == {"FAIL500": 3, "FLAKY2": 3, "DROP": 3, "SLOW": 3, "EMPTY": 1}
    assert fixed["FAIL500"]["fix_error"] == "HTTP 500 (after 3 attempts)"
    assert fixed["DROP"]["fix_error"].startswith("connection error") and "3 attempts" in fixed["DROP"]["fix_error"]
    assert fixed["SLOW"]["fix_error"] == "request timed out (after 3 attempts)"
    assert fixed["EMPTY"]["fix_error"] == "empty reply (after 1 attempt)"
    assert fixed["FLAKY2"]["text"] == "Fixed: " + texts["FLAKY2"]
    assert fixed["ok0"]["text"] == "Fixed: " + texts["ok0"] and fixed["ok0"]["fixer"] == "openai"
    assert server.max_in_flight <= 3

    first = server.requests[0]
    assert first["model"] == "test-model"
    assert first["messages"][0] == {"role": "system", "content": FIX_PROMPT}  # the paper's prompt, verbatim
    assert first["messages"][1]["role"] == "user" and first["messages"][1]["content"] in texts.values()

    verdicts = one_per_key(work / "filtered.jsonl")
    reasons = {k: v["reason"] for k, v in verdicts.items() if v["verdict"] == "reject"}
    assert reasons == {"FAIL500": "fix_failed", "DROP": "fix_failed", "SLOW": "fix_failed", "EMPTY": "fix_failed",
                       "SORRY": "failure_string", "NOREPEAT": "already_correct", "UNFINISHED": "incomplete"}
    assert verdicts["CORRECT"]["verdict"] == "keep" and verdicts["CORRECT"]["text"] == texts["CORRECT"]
    assert verdicts["CORRECT"]["source"] == "original"

    summary = result["summary"]
    assert summary["described"] == len(texts) == summary["fixed"] + summary["fix_failures"]
    assert summary["fix_failures"] == 4 and summary["kept"] == 5
    assert summary["kept"] + summary["rejected"] == summary["images"]
    usage = summary["fix_usage"]
    assert usage["requests"] == len(server.requests) and usage["failed_rows"] == 4
    assert usage["retries"] == 2 + 2 + 2 + 2  # FAIL500, FLAKY2, DROP, SLOW
    ok = [r for r in server.requests if "FAIL500" not in r["paragraph"]]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0 and len(ok) < len(server.requests)
    assert usage["cost"] == pytest.approx(usage["prompt_tokens"] * 0.001 + usage["completion_tokens"] * 0.002)
    annotations = json.loads((work / "cc_sbu_align" / "filter_cap.json").read_text())["annotations"]
    assert len(annotations) == 5


def test_concurrency_limit_is_respected(tmp_path):
    work = described_workdir(tmp_path, {f"k{i}": PARAGRAPH.format(i) for i in range(6)})
    for limit in (1, 3):
        with ChatServer(delay=0.3) as server:
            curate.run(config(work, *openai_options(server, f"fix.openai.concurrency={limit}")), stages="fix",
                       force=True)
        assert len(server.requests) == 6
        assert server.max_in_flight <= limit
        assert server.max_in_flight > 1 or limit == 1  # the pool really sends requests side by side


def test_no_api_key_in_files_or_logs(tmp_path, caplog, capfd):
    work = described_workdir(tmp_path, {"a": PARAGRAPH.format("red"), "b": "FAIL500 " + PARAGRAPH.format("x"),
                                        "c": "DROP " + PARAGRAPH.format("y")})
    with ChatServer() as server:
        yaml = tmp_path / "curate.yaml"
        yaml.write_text(f"""curate:
  work_dir: {work}
  fix:
    fixer: openai
    openai:
      base_url: {server.base_url}
      api_key_env: {KEY_ENV}   # the NAME of the variable, never the key
      backoff_initial: 0.01
""")
        argv = ["--config", str(yaml), "--stages", "fix,filter,review,export", "--options",
                "curate.fix.openai.max_retries=1"]
        with caplog.at_level(logging.DEBUG):
            assert cli.main(argv) == 0
    assert all(r["auth"] == f"Bearer {SECRET}" for r in server.requests)  # the key was really used
    out, err = capfd.readouterr()
    texts = {"caplog": caplog.text, "stdout": out, "stderr": err}
    assert "HTTP 500" in caplog.text and "retrying" in caplog.text  # the error paths were logged
    for path in tmp_path.rglob("*"):
        if path.is_file():
            texts[str(path)] = path.read_bytes().decode("utf-8", "replace")
    assert len(texts) > 10
    leaks = [name for name, text in texts.items() if SECRET in text or SECRET[8:] in text]
    assert not leaks


@pytest.mark.slow  # a subprocess importing the library: about 20 s on 2 busy cores
def test_killed_fix_run_resumes_without_loss_or_duplicates(tmp_path):
    texts = {f"k{i:02d}": PARAGRAPH.format(i) for i in range(10)}
    work = described_workdir(tmp_path, texts)
    with ChatServer(delay=0.4) as server:
        opts = [f"curate.{o}" for o in openai_options(server, "fix.openai.concurrency=1")]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
        log_path = tmp_path / "killed_run.log"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen([sys.executable, "-m", "minigpt4.curate", "--work-dir", str(work), "--stages",
                                     "fix", "--options", *opts], cwd=tmp_path, env=env, stdout=log_file,
                                    stderr=subprocess.STDOUT)
            out = work / "fixed.jsonl"
            kill_after_rows(proc, out, 3, timeout=120)
        before = rows(out)
        assert 3 <= len(before) < 10
        asked_before = len(server.requests)
        curate.run(config(work, *openai_options(server)), stages="fix")
    after = one_per_key(out)
    assert set(after) == set(texts)
    assert rows(out)[: len(before)] == before  # earlier rows kept as they were
    redone = len(server.requests) - asked_before
    assert redone == 10 - len(before)  # exactly the rows not written before the kill are asked again
    logged = log_path.read_text()
    assert "fix: 10 paragraphs through the openai fixer" in logged and SECRET not in logged
    assert all(SECRET not in p.read_text() for p in work.rglob("*") if p.is_file() and p.suffix != ".png")


def test_retry_failed_asks_again(tmp_path):
    work = described_workdir(tmp_path, {"a": PARAGRAPH.format("red"), "b": "FLAKY3 " + PARAGRAPH.format("b")})
    with ChatServer() as server:
        curate.run(config(work, *openai_options(server, "fix.openai.max_retries=1")), stages="fix")
        assert "fix_error" in one_per_key(work / "fixed.jsonl")["b"]
        curate.run(config(work, *openai_options(server, "fix.openai.max_retries=1")), stages="fix")
        assert server.count("FLAKY3") == 2  # a failure row is not asked again by default
        again = curate.run(config(work, *openai_options(server, "fix.openai.max_retries=1")), stages="fix",
                           retry_failed=True)
        assert again["stages"]["fix"]["retried"] == 1 and again["stages"]["fix"]["usage"]["requests"] == 2
        last = curate.run(config(work, *openai_options(server)), stages="fix", retry_failed=True)
    fixed = one_per_key(work / "fixed.jsonl")
    assert fixed["b"]["text"].startswith("Fixed: FLAKY3") and server.count("FLAKY3") == 4
    assert json.loads((work / "fix_usage.json").read_text())["requests"] == len(server.requests) == 5  # a: 1, b: 2 + 2
    assert last["stages"]["fix"]["retried"] == 0 and "usage" not in last["stages"]["fix"]  # nothing left to ask


@pytest.mark.parametrize("status, key", [(401, "curate.fix.openai.api_key_env: the server refused the key"),
                                         (404, "curate.fix.openai.base_url / curate.fix.openai.model")])
def test_answers_every_row_would_get_stop_the_stage(tmp_path, capsys, status, key):
    texts = {"a": PARAGRAPH.format("red"), "b": f"STATUS{status} " + PARAGRAPH.format("b"),
             "c": PARAGRAPH.format("green")}
    work = described_workdir(tmp_path, texts)
    with ChatServer() as server:
        opts = [f"curate.{o}" for o in openai_options(server, "fix.openai.concurrency=1")]
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["--work-dir", str(work), "--stages", "fix", "--options", *opts])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err and f"HTTP {status}" in err and SECRET not in err
    assert server.count(f"STATUS{status}") == 1  # not retried
    assert set(one_per_key(work / "fixed.jsonl")) == {"a"}  # the row before it is kept, nothing is half-written


@pytest.mark.parametrize("case", ["unreachable", "missing_key", "no_base_url"])
def test_endpoint_and_key_problems_are_one_line_errors(tmp_path, monkeypatch, capsys, case):
    work = described_workdir(tmp_path, {"a": PARAGRAPH.format("red")})
    url = f"http://127.0.0.1:{free_port()}/v1"
    opts = ["curate.fix.fixer=openai", f"curate.fix.openai.base_url={url}", f"curate.fix.openai.api_key_env={KEY_ENV}"]
    if case == "missing_key":
        monkeypatch.delenv(KEY_ENV)
    if case == "no_base_url":
        opts = opts[:1]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--work-dir", str(work), "--stages", "fix", "--options", *opts])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    expected = {"unreachable": f"curate.fix.openai.base_url: cannot connect to {url}",
                "missing_key": f"curate.fix.openai.api_key_env: the environment variable {KEY_ENV} is not set",
                "no_base_url": "curate.fix.openai.base_url is not set"}[case]
    assert expected in err
    assert not (work / "fixed.jsonl").exists() or not rows(work / "fixed.jsonl")


@pytest.mark.parametrize("case", ["unreachable", "missing_key"])
def test_fixer_problems_are_found_before_describe_runs(tmp_path, monkeypatch, case):
    """A run of describe then fix checks the openai fixer first: a bad key or URL does not cost a describe pass."""
    from minigpt4.curate import describe

    def describe_ran(*args, **kwargs):
        raise AssertionError("describe ran before the fixer's settings were checked")

    monkeypatch.setattr(describe, "run_describe", describe_ran)
    if case == "missing_key":
        monkeypatch.delenv(KEY_ENV)
    cfg = config(tmp_path / "work", "fix.fixer=openai", f"fix.openai.base_url=http://127.0.0.1:{free_port()}/v1",
                 f"fix.openai.api_key_env={KEY_ENV}")
    with pytest.raises(curate.CurateError, match="curate.fix.openai"):
        curate.run(cfg, stages="describe,fix")
