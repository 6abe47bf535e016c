"""Checkpoints when the disk fails: a write that fails (disk full, permission lost) is a one-line error naming
the file, leaves no temp file and keeps the last good resume point, from which the run continues bitwise; a
resume file whose weights file is damaged is refused up front; ``--resume auto`` never silently starts over."""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import signal

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import train
from minigpt4.common.config import Config, ConfigError
from minigpt4.models import checkpoint as ckpt_io
from minigpt4.models.checkpoint import CheckpointError, save_trainable
from minigpt4.processors import Blip2ImageEvalProcessor
from minigpt4.runners import RunnerBase
from minigpt4.runners import checkpointing as C
from minigpt4.tasks import setup_task
from minigpt4.testing.golden import fixture_dirs
from tests.train_helpers import ListLoader, model_block, train_config, write_align_folder, write_config


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """A real write failure without a full disk: the kernel refuses to grow any file of this process past
    ``nbytes`` (EFBIG, "File too large"), root included."""
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)


def temp_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_a_failed_resume_write_removes_its_temp_file_and_keeps_the_old_one(tmp_path):
    C.atomic_torch_save({"step": 1}, tmp_path / "resume.pt")
    with pytest.raises(C.CheckpointWriteError) as info:
        with file_size_limit(64 * 1024), C.writing(tmp_path / "resume.pt"):
            C.atomic_torch_save({"step": 2, "big": torch.zeros(1 << 20)}, tmp_path / "resume.pt")
    assert str(info.value) == f"cannot write {tmp_path / 'resume.pt'}: File too large, EFBIG"
    assert temp_files(tmp_path) == []
    assert torch.load(tmp_path / "resume.pt", weights_only=True) == {"step": 1}


def test_a_failed_weights_write_removes_its_temp_files_and_keeps_the_old_ones(tmp_path):
    path = save_trainable(tmp_path / "checkpoint_0", {"w": torch.ones(4)}, {"epoch": 0})
    before = path.read_bytes(), path.with_suffix(".json").read_text()
    with pytest.raises(OSError) as info, file_size_limit(64 * 1024):
        save_trainable(path, {"w": torch.zeros(1 << 20)}, {"epoch": 1})
    assert info.value.errno == errno.EFBIG
    assert temp_files(tmp_path) == []
    assert (path.read_bytes(), path.with_suffix(".json").read_text()) == before


# ---------------------------------------------------------------------- a run whose disk fills up
@pytest.fixture(scope="module")
def samples():
    proc = Blip2ImageEvalProcessor(224)
    images = sorted((fixture_dirs()[0] / "images").glob("*.png"))
    captions = ["a red circle next to a blue square", "a green triangle above a yellow bar, on a white background"]
    return [{"image": proc(Image.open(p)), "answer": c} for p, c in zip(images, captions)]


@pytest.fixture(scope="module")
def reference(samples, tmp_path_factory):
    """The trainable weights of the same run, never interrupted."""
    model, runner = _run(tmp_path_factory.mktemp("reference"), samples)
    runner.train()
    return {k: v.clone() for k, v in model.trainable_state_dict().items()}


def _run(root, samples, **run):
    cfg = train_config(root / "data", root / "out", max_epoch=1, iters_per_epoch=6, save_every=2, tensorboard=False,
                       **run)
    cfg.pop("datasets")
    cfg = Config.load(cfg_dict=cfg)
    task = setup_task(cfg)
    model = task.build_model(cfg, device="cpu")
    runner = RunnerBase(cfg, "job", task, model, {}, loader=ListLoader(samples, 2))
    return model, runner


class _FillsUp:
    """A file on a disk that fills up half-way through the write."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        self.f.write(bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.f, name)


def break_writes(monkeypatch, failing_name, how):
    """The checkpoint writer's ``open``, failing when the temp file of ``failing_name`` is opened:
    ``how="full"`` fills the disk mid-write, ``how="denied"`` refuses the file (permission lost)."""
    def fake_open(file, mode="r", *args, **kwargs):
        if "w" in mode and os.path.basename(file).lstrip(".").startswith(failing_name):
            if how == "denied":
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
            return _FillsUp(open(file, mode, *args, **kwargs))
        return open(file, mode, *args, **kwargs)

    monkeypatch.setattr(ckpt_io, "open", fake_open, raising=False)


@pytest.mark.parametrize("failing,how,reason", [("resume.pt", "full", "No space left on device, ENOSPC"),
                                                ("checkpoint_step4.safetensors", "denied", "Permission denied, EACCES"),
                                                ("resume.pt", "quota", "File too large, EFBIG")])
def test_failed_save_mid_run_is_one_line_and_the_run_resumes_bitwise(tmp_path, samples, reference, monkeypatch,
                                                                      failing, how, reason):
    job = tmp_path / "run" / "out" / "job"
    _, runner = _run(tmp_path / "run", samples)
    real_save = runner.save_checkpoint

    def save(state):  # the disk breaks after the first checkpoint (global step 2)
        if state.global_step != 4:
            return real_save(state)
        if how == "quota":  # the real writer against the kernel: the weights (13 KB) fit, the resume file not
            with file_size_limit(20_000):
                return real_save(state)
        break_writes(monkeypatch, failing, how)
        return real_save(state)

    runner.save_checkpoint = save
    with pytest.raises(C.CheckpointWriteError) as info:
        runner.train()
    monkeypatch.undo()
    message = str(info.value)
    assert message == (f"cannot write {job / failing}: {reason}; the last good resume point {job / 'resume.pt'} "
                       f"(global step 2) is untouched")
    assert temp_files(job) == []
    assert torch.load(job / "resume.pt", weights_only=True)["global_step"] == 2

    resumed, runner = _run(tmp_path / "run", samples, resume_ckpt_path=str(job))
    assert runner.train()["global_step"] == 6
    for key, value in reference.items():
        assert torch.equal(resumed.trainable_state_dict()[key], value), key


def test_train_py_reports_a_failed_save_in_one_line(tmp_path, capsys, monkeypatch):
    cfg = train_config(write_align_folder(tmp_path / "align", n=4), tmp_path / "out", max_epoch=1,
                       iters_per_epoch=2, tensorboard=False)
    break_writes(monkeypatch, "resume.pt", "full")
    assert train.cli(["--cfg-path", str(write_config(tmp_path / "cfg.yaml", cfg))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    job = tmp_path / "out" / "job"
    assert err[-1] == (f"train.py: error: cannot write {job / 'resume.pt'}: No space left on device, ENOSPC; "
                       "no resume point was written before this one")
    assert not any("Traceback" in line for line in err)
    assert temp_files(job) == []


# ---------------------------------------------------------------------- damaged resume points
def _checkpoint(job, step=2):
    """A resume file and the weights file it names, as a run writes them."""
    weights = {"llama_proj.weight": torch.randn(4, 3), "llama_proj.bias": torch.zeros(4)}
    name = f"checkpoint_step{step}.safetensors"
    save_trainable(job / name, weights, {"global_step": step})
    C.atomic_torch_save({"format": C.FORMAT_VERSION, "weights": name, "epoch": 0, "step": step,
                         "global_step": step, "world_size": 1, "weights_digests": [C.weights_digest(weights)]},
                        job / "resume.pt")
    (job / "log.txt").write_text("{}\n")
    return job / name


def test_truncated_weights_file_is_refused_naming_both_files(tmp_path):
    weights = _checkpoint(tmp_path / "job")
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(CheckpointError) as info:
        C.load_resume(tmp_path / "job")
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "job" / "resume.pt") in message and str(weights) in message
    assert "truncated or corrupt" in message


def test_replaced_weights_file_is_refused(tmp_path):
    weights = _checkpoint(tmp_path / "job")
    save_trainable(weights, {"llama_proj.weight": torch.zeros(4, 3), "llama_proj.bias": torch.zeros(4)}, {})
    with pytest.raises(CheckpointError, match="not the ones saved with it"):
        C.load_resume(tmp_path / "job")



def _cli(tmp_path, capsys, *extra):
    cfg = train_config(write_align_folder(tmp_path / "align", n=2), tmp_path / "out")
    cfg["model"] = model_block()
    code = train.cli(["--cfg-path", str(write_config(tmp_path / "cfg.yaml", cfg)), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_train_py_refuses_a_corrupt_weights_file_before_any_work(tmp_path, capsys, no_work):
    weights = _checkpoint(tmp_path / "out" / "job")
    weights.write_bytes(b"\x10" + weights.read_bytes()[1:200])
    for args in (["--resume", str(tmp_path / "out" / "job")], ["--resume", "auto"]):
        code, err = _cli(tmp_path, capsys, *args)
        assert code == 2 and not any("Traceback" in line or "SafetensorError" == line[:15] for line in err)
        assert str(weights) in err[-1] and "resume.pt" in err[-1], err[-1]


# ---------------------------------------------------------------------- --resume auto
def _run_cfg(tmp_path):
    return OmegaConf.create({"output_dir": str(tmp_path / "out")})


def test_resume_auto_refuses_a_run_folder_without_resume_file(tmp_path, caplog):
    job = tmp_path / "out" / "20260101120000"
    _checkpoint(job)
    (job / "resume.pt").unlink()
    with pytest.raises(ConfigError) as info:
        train.resolve_resume(_run_cfg(tmp_path), "auto")
    message = str(info.value)
    assert message.startswith(f"--resume auto: {job} holds a run (checkpoint_step2.safetensors, log.txt) but "
                              "no resume.pt; refusing to start over") and "--allow-fresh" in message
    with caplog.at_level(logging.WARNING, logger="train"):
        assert train.resolve_resume(_run_cfg(tmp_path), "auto", allow_fresh=True) is None
    assert "starting a new run (--allow-fresh)" in caplog.text


def test_resume_auto_refuses_an_unusable_resume_file(tmp_path):
    weights = _checkpoint(tmp_path / "out" / "job")
    weights.unlink()
    with pytest.raises(ConfigError, match="the newest resume file is unusable: .*checkpoint_step2.safetensors"):
        train.resolve_resume(_run_cfg(tmp_path), "auto")
    assert train.resolve_resume(_run_cfg(tmp_path), "auto", allow_fresh=True) is None


def test_resume_auto_starts_fresh_when_no_run_started_yet(tmp_path):
    assert train.resolve_resume(_run_cfg(tmp_path), "auto") is None  # no output folder at all
    (tmp_path / "out" / "job").mkdir(parents=True)  # a run that stopped before training started
    assert train.resolve_resume(_run_cfg(tmp_path), "auto") is None
    with pytest.raises(ConfigError, match="--allow-fresh only applies to --resume auto"):
        train.resolve_resume(_run_cfg(tmp_path), None, allow_fresh=True)


def test_train_py_resume_auto_without_resume_file_is_one_line(tmp_path, capsys, no_work):
    _checkpoint(tmp_path / "out" / "job")
    (tmp_path / "out" / "job" / "resume.pt").unlink()
    code, err = _cli(tmp_path, capsys, "--resume", "auto")
    assert code == 2 and err[-1].startswith("train.py: error: --resume auto:") and "--allow-fresh" in err[-1]
