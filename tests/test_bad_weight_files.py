"""Bad weight files and model folders, given to train.py, the caption CLI and the chat CLI: each is one line on
stderr naming the config key, the file and what is wrong, exit status 2, no traceback, before any model or
dataset is built, and never a hang. Library failures that are not the user's keep their traceback."""
from __future__ import annotations

import contextlib
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

import train
from bad_inputs.weight_files import FX, PROJ, RANDOM, Case, all_cases
from inference_config import draw_scene, write_config
from minigpt4 import caption, chat
from minigpt4.models import MiniGPT4
from tests.train_helpers import REPO, subprocess_env, train_config, write_align_folder
from tests.train_helpers import write_config as write_train_config

CASES = all_cases()
CASE_TIMEOUT = 60  # seconds per case (all three entry points); generous for a loaded machine


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Good configs for the three entry points (the golden fixture's micro model) and an image."""
    root = tmp_path_factory.mktemp("bad_weights")
    draw_scene(2).save(root / "image.png")
    (root / "images").mkdir()
    draw_scene(3).save(root / "images" / "a.png")
    write_config(root)
    train_cfg = train_config(write_align_folder(root / "align", n=2), root / "out")
    write_train_config(root / "train.yaml", train_cfg)
    return root


@contextlib.contextmanager
def deadline(seconds: int):
    def hang(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s: the bad input hangs")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def no_model(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a model was built before the bad input was reported")

    monkeypatch.setattr(MiniGPT4, "from_config", classmethod(boom))


def exit_code(call) -> int:
    try:
        return call()
    except SystemExit as e:
        return e.code


def one_line_error(err: str) -> str:
    """The one ``<program>: error: <message>`` line, last on stderr (log lines may come before it)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    return errors[0]


def entry_points(world, key: str, value):
    option = ["--options", f"model.{key}={value}"]
    model_args = ["--cfg-path", str(world / "fixture_eval.yaml"), "--device", "cpu", *option]
    return [
        ("train.py", lambda: train.cli(["--cfg-path", str(world / "train.yaml"), *option])),
        ("minigpt4.caption", lambda: caption.main([*model_args, "--images", str(world / "images"),
                                                   "--out", str(world / "captions.jsonl"), "--no-progress"])),
        ("minigpt4.chat", lambda: chat.main([*model_args, "--image", str(world / "image.png")])),
    ]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_weight_file_is_one_line_naming_key_and_file(case: Case, world, tmp_path, capsys, no_work, no_model):
    path = case.make(tmp_path)
    threads = torch.get_num_threads()
    try:
        with deadline(CASE_TIMEOUT):
            for prog, call in entry_points(world, case.key, path):
                code = exit_code(call)
                line = one_line_error(capsys.readouterr().err)
                assert code == 2, (prog, line)
                assert f"model.{case.key}" in line and str(path) in line and case.expect in line, (prog, line)
    finally:
        torch.set_num_threads(threads)
    out = world / "captions.jsonl"
    assert not out.exists() or out.stat().st_size == 0  # no caption written


def test_corpus_size():
    assert len(CASES) >= 50
    assert {c.key for c in CASES} == {"vit_ckpt", "q_former_model", "llama_model", "ckpt"}


def test_good_files_pass_the_checks(tmp_path):
    from minigpt4.models.hf_folder import check_blip2_folder
    from minigpt4.runners.preflight import check_model_files
    from tests.fixture_utils import model_cfg

    assert check_model_files(model_cfg(FX)) == 64
    (tmp_path / "config.json").write_text('{"model_type": "blip-2"}')
    save_file({"qformer.layernorm.weight": torch.ones(4)}, str(tmp_path / "model.safetensors"))
    assert check_blip2_folder(tmp_path, "model.q_former_model")["model_type"] == "blip-2"


def test_a_failure_inside_torch_keeps_its_traceback(world, monkeypatch, no_model):
    """Not a user error: it must not be turned into a one-line message."""
    def broken_load(*a, **k):
        raise RuntimeError("simulated failure inside torch.load")

    monkeypatch.setattr(torch, "load", broken_load)
    with pytest.raises(RuntimeError, match="simulated failure inside torch.load"):
        chat.main(["--cfg-path", str(world / "fixture_eval.yaml"), "--device", "cpu", "--image",
                   str(world / "image.png")])


def test_cli_boundary_in_real_processes(world, tmp_path):
    """One bad file per command, each in its own process: exit 2, one line, no traceback."""
    (tmp_path / "eva_half.pth").write_bytes((FX / "eva_vit.pth").read_bytes()[:5000])
    save_file({**PROJ, "llama_proj.weight": torch.full((64, 48), float("nan"))}, str(tmp_path / "nan.safetensors"))
    (tmp_path / "random.pth").write_bytes(RANDOM)
    model = ["--cfg-path", str(world / "fixture_eval.yaml"), "--device", "cpu"]
    runs = {
        "train.py": ([str(REPO / "train.py"), "--cfg-path", str(world / "train.yaml"),
                      "--options", f"model.vit_ckpt={tmp_path / 'eva_half.pth'}"], "eva_half.pth"),
        "caption": (["-m", "minigpt4.caption", *model, "--images", str(world / "images"),
                                        "--out", str(tmp_path / "c.jsonl"),
                                        "--options", f"model.ckpt={tmp_path / 'nan.safetensors'}"], "NaN/inf"),
        "chat": (["-m", "minigpt4.chat", *model, "--image", str(world / "image.png"),
                                     "--options", f"model.q_former_model={tmp_path / 'random.pth'}"], "random.pth"),
    }
    procs = {prog: subprocess.Popen([sys.executable, *argv], cwd=tmp_path, env=subprocess_env(), text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
             for prog, (argv, _) in runs.items()}
    for prog, proc in procs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 2, err
        line = one_line_error(err)
        assert runs[prog][1] in line
    assert not (tmp_path / "c.jsonl").exists() or (tmp_path / "c.jsonl").stat().st_size == 0
