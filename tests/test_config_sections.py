"""Typed config sections: one owner per default, values YAML cannot read kept as text, compatibility keys
warned about once, the key list in docs/CONFIG.md generated from the declarations."""
from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from minigpt4 import config_keys
from minigpt4.common.config import Config, ConfigError, parse_options
from minigpt4.common.fields import typed
from minigpt4.common.sections import DatasetConfig, ModelConfig, RunConfig
from tests.train_helpers import REPO, subprocess_env

BASE = "model:\n  arch: minigpt4\nrun:\n  task: image_text_pretrain\n"


def write(tmp_path, text=BASE) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("item, value", [
    ("model.end_sym=@@@", "@@@"), ("model.end_sym=###", "###"), ("model.end_sym=</s>", "</s>"),
    ("model.prompt_template=%s {}", "%s {}"),
])
def test_option_values_yaml_cannot_read_are_kept_as_text(item, value):
    key = item.split("=", 1)[0]
    assert OmegaConf.select(parse_options([item]), key) == value


def test_options_keep_their_yaml_types():
    parsed = parse_options(["run.max_epoch=3", "run.init_lr=1e-3", "run.amp=true", "model.ckpt=null"])
    assert parsed.run.max_epoch == 3 and parsed.run.init_lr == 1e-3 and parsed.run.amp is True
    assert parsed.model.ckpt is None


def test_sections_are_typed_with_every_default_from_one_owner(tmp_path):
    cfg = Config.load(write(tmp_path))
    assert OmegaConf.get_type(cfg.run_cfg) is RunConfig and OmegaConf.get_type(cfg.model_cfg) is ModelConfig
    assert cfg.run_cfg.seed == RunConfig.seed == 42 and cfg.run_cfg.accum_grad_iters == 1
    assert cfg.model_cfg.end_sym == ModelConfig.end_sym
    from minigpt4.inference import conversation_from_config

    conv = conversation_from_config(OmegaConf.create({"prompt_template": "Q: {} A: "}), "training")
    assert conv.sep == ModelConfig.end_sym  # the chat template and the model stop on the same default


def test_typed_checks_direct_callers_too():
    assert typed(DatasetConfig, {"batch_size": 4}, "datasets.x").shuffle_buffer == 1000
    with pytest.raises(ConfigError, match=r"datasets\.x\.batch_size must be >= 1, got -3"):
        typed(DatasetConfig, {"batch_size": -3}, "datasets.x")


def test_compat_keys_warn_once_when_set(tmp_path, caplog):
    path = write(tmp_path, BASE + "  gpu: 0\n  job_name: x\n  world_size: 1\n  evaluate: false\n")
    with caplog.at_level(logging.WARNING):
        Config.load(path)
    ignored = [r.getMessage() for r in caplog.records if "is ignored" in r.getMessage()]
    assert sorted(m.split(" is ")[0] for m in ignored) == ["run.gpu", "run.job_name"]  # defaults say nothing


def test_hf_config_keys_suggest_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.vit_config: unknown key 'num_hiden_layers' .*'num_hidden_layers'"):
        Config.load(write(tmp_path), options=["model.vit_config.num_hiden_layers=2"])


def test_docs_list_every_key_from_the_declarations():
    text = (REPO / "docs" / "CONFIG.md").read_text()
    assert text.strip() == config_keys.markdown(config_keys.SECTIONS).strip(), \
        "regenerate: python -m minigpt4.config_keys --markdown > docs/CONFIG.md"


@pytest.mark.slow  # a real process imports torch and the library: the in-process corpus covers the rest
def test_train_cli_boundary_subprocess(tmp_path):
    """One real process: a malformed --options item (a YAML ScannerError before) is one line naming it, exit 2."""
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "--cfg-path", str(write(tmp_path)),
                           "--options", "run.[x=1"], capture_output=True, text=True, env=subprocess_env(),
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "train.py: error: --options 'run.[x=1': 'run.[x' is not a config key; expected a dotted name such as "
        "model.end_sym or run.max_epoch")
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("option,says", [
    ("run.job_id=../../escape", "run.job_id: '../../escape' must be a plain folder"), ("run.job_id=a/b", "run.job_id"),
    ("model.lora_target_modules=[]", "model.lora_target_modules: [] must be")])
def test_job_id_and_lora_modules_that_cannot_work(option, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        Config.load(options=["model.arch=minigpt4", "model.llama_model=x", option])


def test_an_unreadable_image_in_memory_is_named_by_where_it_came_from():
    from minigpt4.images import UnreadableImage, open_image

    with pytest.raises(UnreadableImage) as exc:
        open_image(b"not a jpeg", where="shard-000.tar:s00001.jpg")
    assert str(exc.value).startswith("shard-000.tar:s00001.jpg: not a readable image") and "_io." not in str(exc.value)


def test_table_bounds_strict_upper_bounds_and_keys_checked_together():
    from dataclasses import dataclass

    from minigpt4.common.fields import check_section, check_table, key, ranged

    table = {"smoothing": ranged((int, float), ge=0, lt=1), "name": (str,)}
    check_table("model", OmegaConf.create({"smoothing": 0.5, "name": "x"}), table)
    with pytest.raises(ConfigError, match=r"^model.smoothing must be < 1, got 1$"):
        check_table("model", OmegaConf.create({"smoothing": 1}), table)
    assert isinstance(0.5, table["smoothing"])  # still the tuple of accepted types

    @dataclass
    class Crop:
        low: float = key(0.1, "smallest", gt=0, le=1)
        high: float = key(1.0, "largest", gt=0, le=1)

        @staticmethod
        def check_together(c):
            return f"low {c['low']} must be <= high {c['high']}" if c["low"] > c["high"] else None

    check_section("crop", {"low": 0.5}, Crop)
    with pytest.raises(ConfigError, match=r"^crop: low 0.5 must be <= high 0.2$"):
        check_section("crop", {"low": 0.5, "high": 0.2}, Crop)
    with pytest.raises(ConfigError, match=r"^crop: low 0.5 must be <= high 0.2$"):
        typed(Crop, {"high": 0.2, "low": 0.5}, "crop")
