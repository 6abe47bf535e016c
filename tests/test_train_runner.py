"""The training loop in-process on the micro fixture model: what changes, what is written, how it stops."""
from __future__ import annotations

import json
import os
import random
import signal

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import load_file

from minigpt4.common.config import Config
from minigpt4.processors import Blip2ImageEvalProcessor
from minigpt4.runners import RunnerBase, TrainingDiverged
from minigpt4.tasks import setup_task
from minigpt4.testing.golden import fixture_dirs
from tests.train_helpers import ListLoader, model_block, train_config

CAPTIONS = ["a red circle next to a blue square", "a green triangle above a yellow bar, on a white background"]


@pytest.fixture(scope="module")
def samples():
    proc = Blip2ImageEvalProcessor(224)
    images = sorted((fixture_dirs()[0] / "images").glob("*.png"))
    return [{"image": proc(Image.open(p)), "answer": c} for p, c in zip(images, CAPTIONS)]


def _cfg(tmp_path, model=None, **run):
    cfg = train_config(tmp_path / "data", tmp_path / "out", **run)
    cfg.pop("datasets")
    if model:
        cfg["model"] = model_block(**model)
    return Config.load(cfg_dict=cfg)


def _train(cfg, rows, batch_size=2, seed=7):
    random.seed(seed)
    torch.manual_seed(seed)
    task = setup_task(cfg)
    model = task.build_model(cfg, device="cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    runner = RunnerBase(cfg, "job", task, model, {}, loader=ListLoader(rows, batch_size))
    result = runner.train()
    return model, before, runner, result


def test_training_lowers_loss_and_changes_only_llama_proj(tmp_path, samples):
    cfg = _cfg(tmp_path, iters_per_epoch=2)
    model, before, runner, result = _train(cfg, samples)
    losses = [loss for _, loss, _ in runner.reporter.history]
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.1
    after = model.state_dict()
    changed = sorted(k for k in after if not torch.equal(after[k], before[k]))
    assert changed == ["llama_proj.bias", "llama_proj.weight"]

    out = tmp_path / "out" / "job"
    assert result["output_dir"] == str(out) and result["global_step"] == 4
    for name in ("checkpoint_0", "checkpoint_1"):
        assert (out / f"{name}.safetensors").is_file()
        meta = json.loads((out / f"{name}.json").read_text())
        assert meta["llm_hidden_size"] == 64 and meta["has_qformer"] is True
    final = load_file(str(out / "checkpoint_1.safetensors"))
    assert sorted(final) == ["llama_proj.bias", "llama_proj.weight"]
    assert torch.equal(final["llama_proj.weight"], after["llama_proj.weight"])
    lines = (out / "log.txt").read_text().splitlines()
    assert json.loads(lines[0])["run"]["init_lr"] == 1e-2
    epochs = [json.loads(line) for line in lines[1:]]
    assert [e["epoch"] for e in epochs] == [0, 1]
    assert epochs[1]["train_loss"] == pytest.approx(sum(losses[2:]) / 2)
    lrs = [lr for _, _, lr in runner.reporter.history]
    assert epochs[0]["train_lr"] == pytest.approx(sum(lrs[:2]) / 2, rel=1e-12)
    assert (out / "curves.png").stat().st_size > 1000
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert (out / "resume.pt").is_file()
    # stage 2 starts from this checkpoint through model.ckpt
    stage2 = _cfg(tmp_path, model=dict(ckpt=str(out / "checkpoint_1.safetensors")))
    loaded = setup_task(stage2).build_model(stage2, device="cpu")
    assert torch.equal(loaded.llama_proj.weight, after["llama_proj.weight"])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, samples):
    bad = dict(samples[0], image=torch.full_like(samples[0]["image"], float("nan")))
    rows = samples * 2 + [bad, samples[1]]  # the 3rd batch (epoch 1, step 0) holds the NaN image
    cfg = _cfg(tmp_path, iters_per_epoch=2)
    with pytest.raises(TrainingDiverged, match="global step 3; stopped without saving; the last good checkpoint in"):
        _train(cfg, rows)
    out = tmp_path / "out" / "job"
    assert (out / "checkpoint_0.safetensors").is_file() and not (out / "checkpoint_1.safetensors").exists()
    state = torch.load(out / "resume.pt", weights_only=True)
    assert state["global_step"] == 2 and state["weights"] == "checkpoint_0.safetensors"
    assert torch.isfinite(load_file(str(out / "checkpoint_0.safetensors"))["llama_proj.weight"]).all()


STAGE2 = dict(prompt_path="prompts/alignment.txt", prompt_template="###Human: {} ###Assistant: ", end_sym="###",
              max_txt_len=160)


def test_stop_and_resume_in_process_is_bitwise(tmp_path, samples):
    """Stage-2 style (a random instruction per batch, so the Python RNG state matters), with accumulation."""
    rows = samples + [dict(samples[0], answer="A blue square."), dict(samples[1], answer="Two shapes.")]
    common = dict(max_epoch=1, iters_per_epoch=4, accum_grad_iters=2, max_grad_norm=1.0, batch_size_train=1)
    full, _, _, _ = _train(_cfg(tmp_path / "a", model=STAGE2, **common), rows, batch_size=1)
    # max_seconds=0: stop at the first optimizer step (global step 2, mid-epoch), checkpoint, exit
    part_cfg = _cfg(tmp_path / "b", model=STAGE2, max_seconds=0, **common)
    _, _, _, result = _train(part_cfg, rows, batch_size=1)
    assert result["stopped_at"] == 2
    resumed_cfg = _cfg(tmp_path / "b", model=STAGE2, resume_ckpt_path=str(tmp_path / "b" / "out" / "job"), **common)
    # a different seed proves the state comes from the resume file, not from re-seeding
    resumed, _, runner, result = _train(resumed_cfg, rows, batch_size=1, seed=999)
    assert result["global_step"] == 4
    for key in ("llama_proj.weight", "llama_proj.bias"):
        assert torch.equal(resumed.state_dict()[key], full.state_dict()[key]), key
    # and the resumed run's log continues the epoch lines
    lines = (tmp_path / "b" / "out" / "job" / "log.txt").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines if '"train_loss"' in line] == [0]


def test_accumulation_equals_the_bigger_batch(tmp_path, samples):
    """Two micro-batches of one sample, accumulated, give the update of one batch of both."""
    rows = [samples[0], samples[0]]
    acc, _, _, _ = _train(_cfg(tmp_path / "b", max_epoch=1, iters_per_epoch=4, accum_grad_iters=2,
                               batch_size_train=1, warmup_steps=0, init_lr=1e-2, min_lr=1e-2), rows, 1)
    ref, _, _, _ = _train(_cfg(tmp_path / "c", max_epoch=1, iters_per_epoch=2, batch_size_train=2,
                               warmup_steps=0, init_lr=1e-2, min_lr=1e-2), rows, 2)
    torch.testing.assert_close(acc.llama_proj.weight, ref.llama_proj.weight, rtol=1e-4, atol=1e-6)
    init = torch.load(fixture_dirs()[0] / "minigpt4_proj.pth", weights_only=True)["model"]["llama_proj.weight"]
    assert (ref.llama_proj.weight - init).abs().max() > 1e-3  # both really trained


class _TermAt(ListLoader):
    """Sends this process SIGTERM while producing batch ``at`` (as a cluster scheduler would)."""

    def __init__(self, rows, batch_size, at):
        super().__init__(rows, batch_size)
        self.at, self.count = at, 0

    def __next__(self):
        self.count += 1
        if self.count == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().__next__()


def test_sigterm_stops_with_a_checkpoint(tmp_path, samples):
    cfg = _cfg(tmp_path, max_epoch=1, iters_per_epoch=4)
    task = setup_task(cfg)
    runner = RunnerBase(cfg, "job", task, task.build_model(cfg, device="cpu"), {}, loader=_TermAt(samples, 2, at=2))
    handler = signal.getsignal(signal.SIGTERM)
    result = runner.train()
    assert result["stopped_at"] == 2
    assert signal.getsignal(signal.SIGTERM) is handler  # restored
    state = torch.load(tmp_path / "out" / "job" / "resume.pt", weights_only=True)
    assert (state["global_step"], state["step"], state["data"][0]) == (2, 2, {"pos": 4})


@pytest.mark.filterwarnings("ignore:.*CUDA is not available")
def test_amp_selection():
    """fp16 gets a GradScaler, bf16 none, CPU ignores AMP, an unknown dtype names the key."""
    from types import SimpleNamespace

    from minigpt4.common.config import ConfigError

    def amp(device, **run):
        return RunnerBase._setup_amp(SimpleNamespace(run=OmegaConf.create({"amp": True, **run}),
                                                     device=torch.device(device)))

    assert amp("cpu") == (None, None)
    dtype, scaler = amp("cuda", amp_dtype="bfloat16")
    assert dtype == torch.bfloat16 and scaler is None
    dtype, scaler = amp("cuda")
    assert dtype == torch.float16 and isinstance(scaler, torch.amp.GradScaler)
    with pytest.raises(ConfigError, match="run.amp_dtype"):
        amp("cuda", amp_dtype="fp8")
