"""The command-line boundary: a user error is one line and exit status 2; a bug keeps its traceback."""
from __future__ import annotations

import shutil

import pytest

import train
from minigpt4.common import shipped
from minigpt4.common.config import Config, resolve_path
from minigpt4.common.registry import registry
from minigpt4.errors import ConfigError, MissingFile, UsageError, UserError, run_cli, user_errors
from tests.train_helpers import model_block, train_config, write_align_folder, write_config


def _train(tmp_path, **model):
    cfg = train_config(write_align_folder(tmp_path / "align", n=4), tmp_path / "out")
    cfg["model"] = model_block(**model)
    return ["--cfg-path", str(write_config(tmp_path / "cfg.yaml", cfg))]


def test_a_bug_inside_model_building_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    from minigpt4.models import llm

    class Broken:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            raise ValueError("a bug inside transformers")

    monkeypatch.setattr(llm, "AutoModelForCausalLM", Broken)
    with pytest.raises(ValueError, match="a bug inside transformers"):
        train.cli(_train(tmp_path))
    assert "error:" not in capsys.readouterr().err


def test_a_user_error_inside_model_building_is_one_line(tmp_path, capsys):
    code = train.cli(_train(tmp_path, low_resource=True))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("train.py: error: model.low_resource / model.load_in_4bit")
    assert not any("Traceback" in line for line in err)


def test_the_console_script_names_itself(tmp_path, capsys):
    assert train.console.__module__ == "minigpt4.train"
    code = train.cli(["--cfg-path", str(tmp_path / "none.yaml")], prog="minigpt4-train")
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"minigpt4-train: error: --cfg-path {tmp_path / 'none.yaml'}: no such file"


def test_the_boundary_catches_user_errors_only(capsys):
    def fail(exc):
        raise exc

    assert run_cli("prog", fail, MissingFile("model.ckpt: /x does not exist")) == 2
    assert capsys.readouterr().err == "prog: error: model.ckpt: /x does not exist\n"
    with pytest.raises(SystemExit) as stop, user_errors("prog"):
        raise UsageError("--port must be in 1..65535, got 0")
    assert stop.value.code == 2 and capsys.readouterr().err == "prog: error: --port must be in 1..65535, got 0\n"
    for bug in (ValueError("bug"), KeyError("bug"), FileNotFoundError("bug")):
        with pytest.raises(type(bug)):
            run_cli("prog", fail, bug)
        with pytest.raises(type(bug)), user_errors("prog"):
            raise bug
    assert capsys.readouterr().err == ""


def test_user_errors_keep_their_builtin_bases():
    """Callers that catch ValueError / FileNotFoundError around library calls still catch them."""
    assert issubclass(ConfigError, ValueError) and issubclass(UsageError, ValueError)
    assert issubclass(MissingFile, FileNotFoundError) and issubclass(MissingFile, UserError)


def test_an_unknown_registry_name_names_its_key():
    with pytest.raises(ConfigError, match=r"^run.task: unknown task 'image_text_pretrian'; did you mean "
                                          r"'image_text_pretrain'\?"):
        registry.get_task_class("image_text_pretrian", key="run.task")


def test_tiny_world_usage_error_is_one_line(capsys):
    from minigpt4.tiny_world.__main__ import main

    assert main(["--nproc", "0"]) == 2
    assert capsys.readouterr().err == "minigpt4.tiny_world: error: --nproc must be at least 1, got 0\n"


def test_repository_configs_are_found_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = Config.load("train_configs/tiny_stage2.yaml").config
    assert cfg.model.prompt_path == "prompts/alignment.txt"
    assert resolve_path("prompts/alignment.txt") == shipped.ROOTS[0] / "prompts" / "alignment.txt"


def test_an_installed_package_finds_its_shipped_copy(tmp_path, monkeypatch):
    """Outside a checkout only the package's copy exists (``minigpt4/shipped/<folder>/``)."""
    installed = tmp_path / "site-packages" / "minigpt4" / "shipped"
    shutil.copytree(shipped.ROOTS[0] / "eval_configs", installed / "eval_configs")
    monkeypatch.setattr(shipped, "ROOTS", (tmp_path / "site-packages", installed))
    assert shipped.config_file("eval_configs/tiny_eval.yaml") == installed / "eval_configs" / "tiny_eval.yaml"
    assert shipped.shipped_file("prompts/alignment.txt") is None
    assert shipped.shipped_file("README.md") is None  # only the config folders ship


def test_every_console_script_names_a_function():
    import importlib
    import tomllib
    from pathlib import Path

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    scripts = tomllib.loads(pyproject.read_text())["project"]["scripts"]
    wanted = {"minigpt4-train", "minigpt4-caption", "minigpt4-chat", "minigpt4-demo", "minigpt4-tiny-world"}
    assert wanted <= set(scripts)
    for name, target in scripts.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name


def test_an_output_folder_that_is_a_file_is_one_line(tmp_path):
    from minigpt4.errors import out_folder

    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(UsageError, match=rf"^--out {notes}: is a file, not a folder$"):
        out_folder(notes, "--out")
    with pytest.raises(UsageError, match=rf"^--out {notes / 'x'}: cannot be created, {notes} is a file$"):
        out_folder(notes / "x", "--out", create=True)
    assert out_folder(tmp_path / "a" / "b", "--out") == tmp_path / "a" / "b" and not (tmp_path / "a").exists()
    assert out_folder(tmp_path / "a" / "b", "--out", create=True).is_dir()
    assert notes.read_text() == "mine"


def test_an_output_folder_that_is_empty_or_cannot_exist_is_one_line(tmp_path):
    from minigpt4.errors import out_folder

    with pytest.raises(UsageError, match="^--out is empty; give a folder$"):
        out_folder("", "--out")  # Path("") would be the current folder
    with pytest.raises(UsageError, match=r"^--out /proc/minigpt4-x/y: cannot create the folder \("):
        out_folder("/proc/minigpt4-x/y", "--out")  # writable by root, yet it holds no new folders
    assert not (tmp_path / "a").exists()


PATH_FLAGS = [("minigpt4.train", ["--cfg-path", ""]),
              ("minigpt4.chat", ["--cfg-path", "c.yaml", "--image", ""]),
              ("minigpt4.chat", ["--cfg-path", "c.yaml", "--image", "x.jpg", "--tiny-world", ""]),
              ("minigpt4.caption", ["--cfg-path", "c.yaml", "--images", "", "--out", "o.jsonl"]),
              ("minigpt4.caption", ["--cfg-path", "c.yaml", "--images", "i", "--out", ""]),
              ("minigpt4.curate.__main__", ["--work-dir", ""]),
              ("minigpt4.features.__main__", ["extract", "--cfg-path", "c.yaml", "--out", ""]),
              ("minigpt4.serve.cli", ["--cfg-path", "c.yaml", "--allow-local-dir", ""]),
              ("minigpt4.tiny_world.__main__", ["--out", ""]),
              ("minigpt4.lora_export", ["--cfg-path", "c.yaml", "--out", ""]),
              ("minigpt4.gpt4image.embed", ["--descriptions", "", "--out", "e.safetensors"]),
              ("minigpt4.gpt4image.tiny", ["--out", ""]),
              ("minigpt4.demo", ["--cfg-path", ""])]


@pytest.mark.parametrize("module, argv", PATH_FLAGS, ids=lambda x: x if isinstance(x, str) else " ".join(x))
def test_an_empty_path_flag_is_refused_before_anything_runs(module, argv, tmp_path, monkeypatch, capsys):
    import importlib

    monkeypatch.chdir(tmp_path)  # an accepted "" would be this folder
    with pytest.raises(SystemExit) as info:
        importlib.import_module(module).main(argv)
    flag = argv[argv.index("") - 1]
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and err[-1].endswith(f"error: argument {flag}: must not be empty"), err
    assert list(tmp_path.iterdir()) == []
