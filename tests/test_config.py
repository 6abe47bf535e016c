"""Layered configs: merge order, --options forms, model_type switching, validation errors."""
from __future__ import annotations

import re
import textwrap

import pytest

from minigpt4.common.config import Config, ConfigError, parse_options
from minigpt4.common.registry import registry


def write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


BASE = """
model:
  arch: mini_gpt4
  model_type: pretrain_vicuna0
  max_txt_len: 160
run:
  task: image_text_pretrain
  init_lr: 3e-5
  max_epoch: 5
"""


def test_model_defaults_user_and_options_merge_in_order(tmp_path):
    cfg = Config.load(write(tmp_path, BASE), options=["model.end_sym=###", "run.max_epoch=7"])
    m = cfg.model_cfg
    assert m.num_query_token == 32 and m.vit_precision == "fp16"  # from the model's default YAML
    assert m.max_txt_len == 160  # user YAML beats the default (32)
    assert m.end_sym == "###" and cfg.run_cfg.max_epoch == 7  # --options beat everything
    assert cfg.run_cfg.init_lr == pytest.approx(3e-5)
    assert cfg.config.preprocess.vis_processor.train.name == "blip2_image_train"


def test_both_arch_names_resolve():
    assert registry.get_model_class("mini_gpt4") is registry.get_model_class("minigpt4")


def test_options_model_type_switches_default_yaml(tmp_path):
    cfg = Config.load(write(tmp_path, BASE), options=["model.model_type=pretrain_llama2"])
    assert cfg.model_cfg.has_qformer is False
    assert cfg.model_cfg.num_query_token is None  # the Vicuna preset's 32 does not leak into the Llama-2 one


def test_alternating_options():
    assert parse_options(["run.seed", "3", "model.end_sym", "x"]) == {"run": {"seed": 3}, "model": {"end_sym": "x"}}
    with pytest.raises(ConfigError, match="--options"):
        parse_options(["a=1", "b"])


@pytest.mark.parametrize("text, message", [
    ("runn:\n  seed: 1\n", r"unknown top-level section 'runn' \(did you mean 'run'\?\)"),
    ("run:\n  init_lrr: 1e-4\n", r"unknown key run\.init_lrr \(did you mean 'init_lr'\?\)"),
    ("run:\n  max_epoch: four\n", r"run\.max_epoch must be int, got 'four'"),
    ("run:\n  amp: 1\n", r"run\.amp must be bool"),
    ("model:\n  arch: minigpt4\n  max_txt_len: 1.5\n", r"model\.max_txt_len must be int"),
    ("model:\n  arch: minigpt4\n  model_type: pretrain_vicuna\n", r"model_type 'pretrain_vicuna' is not known.*pretrain_vicuna0"),
    ("model:\n  arch: minigpt5\n", r"unknown model 'minigpt5'.*minigpt4"),
])
def test_errors_name_the_key(tmp_path, text, message):
    with pytest.raises((ConfigError, KeyError), match=message):
        Config.load(write(tmp_path, text))


def test_bad_option_type_is_caught(tmp_path):
    with pytest.raises(ConfigError, match=r"run\.iters_per_epoch must be int"):
        Config.load(write(tmp_path, BASE), options=["run.iters_per_epoch=abc"])


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("model:\n  arch: minigpt4\n\tbad: 1\n", "not valid YAML at line 3, column 1"),
    ("model: [1, 2\n", "not valid YAML at line 2"),
    (b"\xff\xfe\x00\x81binary", "not a text (YAML) file"),
    ("- a\n- b\n", "expected a mapping of sections"),
])
def test_unreadable_config_files_are_one_line_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "cfg.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        Config.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="is a folder"):
        Config.load(tmp_path)
