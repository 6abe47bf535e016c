"""The task wiring: registry lookups for the task, the datasets and the model."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from minigpt4.common.config import Config, ConfigError
from minigpt4.common.registry import registry
from minigpt4.tasks import ImageTextPretrainTask, setup_task
from minigpt4.testing.golden import fixture_dirs, model_cfg


def _model_block():
    block = OmegaConf.to_container(model_cfg(fixture_dirs()[0]))
    block.pop("device")
    return block


def test_setup_task_by_name():
    cfg = Config.load(cfg_dict={"run": {"task": "image_text_pretrain"}})
    assert isinstance(setup_task(cfg), ImageTextPretrainTask)


def test_unknown_task_is_config_error():
    cfg = Config.load(cfg_dict={"run": {"task": "image_text_pretrian"}})
    with pytest.raises(ConfigError, match="image_text_pretrain"):
        setup_task(cfg)


def test_build_model_through_registry():
    cfg = Config.load(cfg_dict={"run": {"task": "image_text_pretrain", "device": "cpu"}, "model": _model_block()})
    model = setup_task(cfg).build_model(cfg)
    assert isinstance(model, registry.get_model_class("minigpt4"))
    assert sorted(model.trainable_state_dict()) == ["llama_proj.bias", "llama_proj.weight"]
    assert model.device == torch.device("cpu")


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"image": torch.zeros(3, 4, 4), "answer": str(i)}


def test_build_datasets_sets_name_and_ratio(monkeypatch):
    built = []

    class FakeBuilder:
        DATASET_CONFIG_DICT = {}

        def __init__(self, block):
            built.append(block)

        def build_datasets(self):
            return {"train": _ListDataset(3)}

    monkeypatch.setitem(registry.mapping["builder_name_mapping"], "fake_a", FakeBuilder)
    monkeypatch.setitem(registry.mapping["builder_name_mapping"], "fake_b", FakeBuilder)
    monkeypatch.setattr("minigpt4.common.config.dataset_default_config", lambda name, block: OmegaConf.create())
    cfg = Config.load(cfg_dict={"run": {"task": "image_text_pretrain"},
                                "datasets": {"fake_a": {"sample_ratio": 115}, "fake_b": {}}})
    out = setup_task(cfg).build_datasets(cfg)
    assert set(out) == {"fake_a", "fake_b"}
    assert (out["fake_a"]["train"].name, out["fake_a"]["train"].sample_ratio) == ("fake_a", 115)
    assert (out["fake_b"]["train"].name, out["fake_b"]["train"].sample_ratio) == ("fake_b", 1)
    assert len(built) == 2
