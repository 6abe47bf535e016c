"""The tiny configs read one tiny world folder: --tiny-world DIR, else ./tiny_world, else the repository's."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from minigpt4 import chat as chat_cli
from minigpt4.common.config import Config
from minigpt4.common.tiny_world_paths import (
    TinyWorldError,
    check_tiny_world,
    set_tiny_world,
    tiny_world_dir,
    tiny_world_paths,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"eval": ROOT / "eval_configs" / "tiny_eval.yaml", "stage1": ROOT / "train_configs" / "tiny_stage1.yaml",
           "stage2": ROOT / "train_configs" / "tiny_stage2.yaml"}
MODEL_KEYS = {"model.vit_ckpt", "model.q_former_model", "model.llama_model"}


@pytest.fixture(autouse=True)
def default_lookup():
    set_tiny_world(None)
    yield
    set_tiny_world(None)


def fake_world(root: Path, cfg) -> dict:
    """Create every input the config names (empty files and folders are enough for the check)."""
    paths = tiny_world_paths(cfg)
    for key, path in paths.items():
        if key.endswith("output_dir"):
            continue
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
        else:
            path.mkdir(parents=True, exist_ok=True)
    return paths


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_path_of_a_tiny_config_follows_the_flag(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # another folder than the repository
    world = tmp_path / "elsewhere" / "my_world"
    set_tiny_world(world)
    cfg = Config.load(CONFIGS[name]).config
    paths = fake_world(world, cfg)
    assert MODEL_KEYS <= set(paths) and all(p.is_relative_to(world) for p in paths.values())
    if name != "eval":
        assert {"run.output_dir", f"datasets.{next(iter(cfg.datasets))}.build_info.storage"} <= set(paths)
    assert cfg.model.llama_model == str(world / "backbones" / "llm")
    check_tiny_world(cfg)  # complete: no error
    victim = sorted(k for k in paths if k.startswith("model."))[0]
    path = paths[victim]
    path.rmdir() if path.is_dir() else path.unlink()
    with pytest.raises(TinyWorldError, match=f"^{victim}: .* build the tiny world first: "
                                             f"python -m minigpt4.tiny_world --out {world}$"):
        check_tiny_world(cfg)


def test_explicit_options_still_win(tmp_path):
    set_tiny_world(tmp_path)
    cfg = Config.load(CONFIGS["eval"], ["model.llama_model=/somewhere/llm"]).config
    assert cfg.model.llama_model == "/somewhere/llm" and "model.llama_model" not in tiny_world_paths(cfg)


def test_default_is_the_working_directory_then_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    in_repo = ROOT / "tiny_world"
    assert tiny_world_dir() == (in_repo if in_repo.exists() else Path("tiny_world"))
    (tmp_path / "tiny_world").mkdir()
    assert tiny_world_dir() == Path("tiny_world")


def test_a_missing_world_says_how_to_build_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        chat_cli.main(["--cfg-path", str(CONFIGS["eval"]), "--tiny-world", "no_world", "--image", "x.png"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert err.endswith("no tiny world at no_world: build the tiny world first: python -m minigpt4.tiny_world "
                        "--out no_world, or point --tiny-world DIR at one")


def test_train_py_refuses_a_missing_world_in_one_line(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("train_for_flag_test", ROOT / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    monkeypatch.chdir(tmp_path)
    code = train.cli(["--cfg-path", str(CONFIGS["stage1"]), "--tiny-world", str(tmp_path / "w")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == (f"train.py: error: no tiny world at {tmp_path / 'w'}: build the tiny world first: "
                                     f"python -m minigpt4.tiny_world --out {tmp_path / 'w'}, or point --tiny-world "
                                     "DIR at one")


def test_the_flag_with_a_config_that_does_not_use_it_is_refused(tmp_path):
    set_tiny_world(tmp_path)
    cfg = Config.load(cfg_dict={"model": {"arch": "minigpt4", "llama_model": "/x"}}).config
    with pytest.raises(TinyWorldError, match="--tiny-world: .* has no"):
        check_tiny_world(cfg)
