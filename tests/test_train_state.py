"""TrainState as one unit (resume-file fields in, same fields out) and the ``run.parallel`` choices."""
from __future__ import annotations

import io

import pytest
import torch
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM

from minigpt4.common.config import ConfigError
from minigpt4.runners import parallel as P
from minigpt4.runners.state import TrainState


def test_state_round_trips_through_a_weights_only_resume_file():
    state = TrainState()
    for loss, lr in ((2.0, 0.1), (1.0, 0.2), (0.5, 0.3)):
        state.record(loss, lr)
    buf = io.BytesIO()
    torch.save({"format": 1, **state.to_resume()}, buf)
    saved = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    assert saved["epoch_sums"] == [3.5, pytest.approx(0.6), 3] and saved["global_step"] == 3

    history = []
    restored = TrainState(history=history)
    restored.restore(saved, iters_per_epoch=5)  # mid-epoch: the sums carry on, the history list is kept
    assert restored == state and restored.history is history
    assert restored.epoch_means() == {"train_loss": 3.5 / 3, "train_lr": pytest.approx(0.2)}

    restored.restore(saved, iters_per_epoch=3)  # saved at the end of an epoch: the next one starts afresh
    assert (restored.epoch, restored.step, restored.global_step, restored.count) == (1, 0, 3, 0)
    assert len(restored.history) == 3


def test_parallel_mode_and_fsdp_units():
    assert P.parallel_mode(OmegaConf.create({})) == "ddp"
    assert P.parallel_mode(OmegaConf.create({"parallel": "FSDP"})) == "fsdp"
    with pytest.raises(ConfigError, match="run.parallel must be one of"):
        P.parallel_mode(OmegaConf.create({"parallel": "zero3"}))
    with pytest.raises(ConfigError, match="model.load_in_4bit"):
        P.check_fsdp(OmegaConf.create({"load_in_4bit": True}))
    llm = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                       num_attention_heads=2, vocab_size=32))
    assert P.decoder_layers(llm) == list(llm.model.layers)
