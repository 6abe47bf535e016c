"""The malformed-config corpus (tests/bad_inputs/configs/cases.yaml) against train.py, the chat CLI and the
caption CLI, in process: every case ends in exit status 2 with one error line naming the key / flag / file,
no traceback, no hang (per-case alarm), and nothing built (datasets, model, caption ranks)."""
from __future__ import annotations

import copy
import signal
from pathlib import Path

import pytest
import yaml

import train
from inference_config import draw_scene, write_config as write_eval_config
from minigpt4 import caption as caption_cli
from minigpt4 import chat as chat_cli
from tests.train_helpers import train_config, write_align_folder

CASES = yaml.safe_load((Path(__file__).parent / "bad_inputs" / "configs" / "cases.yaml").read_text())
DELETE = "~delete~"
SECONDS_PER_CASE = 30


def by_entry(entry: str) -> list:
    return [pytest.param(c, id=c["id"]) for c in CASES if entry in c.get("entries", ["train"])]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_configs")
    data = write_align_folder(root / "align", n=2)
    train_base = train_config(data, root / "out")
    train_base["preprocess"] = {"vis_processor": {"eval": {"name": "blip2_image_eval", "image_size": 224}}}
    eval_base = yaml.safe_load(write_eval_config(root).read_text())
    (root / "images").mkdir()
    draw_scene(0).save(root / "images" / "a.png")
    return {"root": root, "train": train_base, "chat": eval_base, "caption": eval_base}


def apply(cfg: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = cfg
    for name in parents:
        if not isinstance(node.get(name), dict):
            node[name] = {}
        node = node[name]
    if value == DELETE:
        node.pop(last, None)
    else:
        node[last] = value


class _Dumper(yaml.SafeDumper):
    """Strings that read as numbers stay quoted, as the user wrote them (``init_lr: '1e-3'``)."""


def _str(dumper, value):
    try:
        float(value)
        style = "'"
    except ValueError:
        style = None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def case_file(case: dict, base: dict, folder: Path) -> str:
    if case.get("cfg_path") == "missing":
        return str(folder / "no_such.yaml")
    if case.get("cfg_path") == "folder":
        return str(folder)
    path = folder / f"{case['id']}.yaml"
    if "bytes_hex" in case:
        path.write_bytes(bytes.fromhex(case["bytes_hex"]))
    elif "yaml" in case:
        path.write_text(case["yaml"])
    else:
        cfg = copy.deepcopy(base)
        for dotted, value in (case.get("set") or {}).items():
            apply(cfg, dotted, value)
        if "llm_config_json" in case:
            llm = folder / "llm"
            llm.mkdir()
            (llm / "config.json").write_text(case["llm_config_json"])
            apply(cfg, "model.llama_model", str(llm))
        path.write_text(yaml.dump(cfg, Dumper=_Dumper, sort_keys=False))
    return str(path)


def _alarm(signum, frame):
    raise TimeoutError("the case hung")


def run_case(call, argv) -> int:
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(SECONDS_PER_CASE)
    try:
        return call(argv)
    except SystemExit as e:
        return e.code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def check(case, code, err: str) -> None:
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2, f"exit {code}: {err}"
    assert len(errors) == 1, err
    assert case["expect"] in errors[0], errors[0]


@pytest.fixture
def nothing_built(monkeypatch, no_work):
    def boom(*a, **k):
        raise AssertionError("work started before the bad input was reported")

    monkeypatch.setattr("minigpt4.models.MiniGPT4.from_config", boom)
    monkeypatch.setattr("minigpt4.sharded_jsonl.launch_ranks", boom)


def argv_of(case, path) -> list[str]:
    options = case.get("options") or []
    return ["--cfg-path", path, *(["--options", *options] if options else []), *(case.get("argv") or [])]


@pytest.mark.parametrize("case", by_entry("train"))
def test_train(case, bases, capsys, nothing_built, tmp_path):
    path = case_file(case, bases["train"], tmp_path)
    code = run_case(train.cli, argv_of(case, path))
    check(case, code, capsys.readouterr().err)


@pytest.mark.parametrize("case", by_entry("chat"))
def test_chat_cli(case, bases, capsys, nothing_built, tmp_path):
    path = case_file(case, bases["chat"], tmp_path)
    argv = argv_of(case, path) + ["--image", str(bases["root"] / "images" / "a.png")]
    code = run_case(chat_cli.main, argv)
    check(case, code, capsys.readouterr().err)


@pytest.mark.parametrize("case", by_entry("caption"))
def test_caption_cli(case, bases, capsys, nothing_built, tmp_path):
    path = case_file(case, bases["caption"], tmp_path)
    argv = argv_of(case, path) + ["--images", str(bases["root"] / "images"), "--out", str(tmp_path / "out.jsonl")]
    code = run_case(caption_cli.main, argv)
    check(case, code, capsys.readouterr().err)
    assert not (tmp_path / "out.jsonl").exists()


def test_corpus_size():
    assert len(CASES) >= 100 and len({c["id"] for c in CASES}) == len(CASES)
