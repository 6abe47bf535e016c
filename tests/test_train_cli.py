"""train.py on bad input: one line on stderr, exit code 2, before any model or dataset is built."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import train
from tests.train_helpers import model_block, run_train, train_config, write_align_folder, write_config



def _cli(tmp_path, capsys, cfg, *extra):
    code = train.cli(["--cfg-path", str(write_config(tmp_path / "cfg.yaml", cfg)), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else "", err


def _cfg(tmp_path, **model):
    cfg = train_config(write_align_folder(tmp_path / "align", n=2), tmp_path / "out")
    cfg["model"] = model_block(**model)
    return cfg


def test_unknown_run_key_subprocess(tmp_path):
    cfg = _cfg(tmp_path)
    cfg["run"]["lerning_rate"] = 1e-4
    r = run_train(["--cfg-path", str(write_config(tmp_path / "cfg.yaml", cfg))], cwd=tmp_path, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("train.py: error: unknown key run.lerning_rate")
    assert not (tmp_path / "out").exists()


def test_unknown_key_from_options(tmp_path, capsys, no_work):
    code, line, _ = _cli(tmp_path, capsys, _cfg(tmp_path), "--options", "run.max_epochs=3")
    assert code == 2 and "run.max_epochs" in line and "max_epoch" in line


def test_missing_ckpt(tmp_path, capsys, no_work):
    code, line, _ = _cli(tmp_path, capsys, _cfg(tmp_path, ckpt=str(tmp_path / "stage1" / "checkpoint_3.pth")))
    assert code == 2
    assert line.startswith("train.py: error: model.ckpt") and "does not exist" in line


def test_stage1_checkpoint_for_another_llm_size(tmp_path, capsys, no_work):
    wrong = tmp_path / "wrong.safetensors"
    save_file({"llama_proj.weight": torch.zeros(32, 48), "llama_proj.bias": torch.zeros(32)}, str(wrong))
    code, line, _ = _cli(tmp_path, capsys, _cfg(tmp_path, ckpt=str(wrong)))
    assert code == 2
    assert "model.ckpt" in line and "hidden size 32" in line and "hidden size 64" in line


def test_original_pth_of_another_llm_size(tmp_path, capsys, no_work):
    wrong = tmp_path / "pretrained_minigpt4.pth"
    torch.save({"model": {"llama_proj.weight": torch.zeros(80, 48), "llama_proj.bias": torch.zeros(80)}}, wrong)
    code, line, _ = _cli(tmp_path, capsys, _cfg(tmp_path, ckpt=str(wrong)))
    assert code == 2 and "[80, 48]" in line


def test_output_folder_not_writable(tmp_path, capsys, no_work):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cfg = _cfg(tmp_path)
    cfg["run"]["output_dir"] = str(blocker / "runs")
    code, line, _ = _cli(tmp_path, capsys, cfg)
    assert code == 2 and line.startswith("train.py: error: run.output_dir: cannot write to")


def test_resume_path_missing(tmp_path, capsys, no_work):
    code, line, _ = _cli(tmp_path, capsys, _cfg(tmp_path), "--resume", str(tmp_path / "nope"))
    assert code == 2 and "does not exist" in line


def test_resume_auto_without_previous_run_starts_fresh(tmp_path):
    run = train_config(tmp_path, tmp_path / "out")["run"]
    from omegaconf import OmegaConf

    assert train.resolve_resume(OmegaConf.create(run), "auto") is None


def test_resume_from_an_original_checkpoint_is_refused(tmp_path, capsys, no_work):
    lavis = tmp_path / "checkpoint_3.pth"
    torch.save({"model": {"llama_proj.weight": torch.zeros(64, 48)}, "optimizer": {}, "epoch": 3}, lavis)
    code, line, _ = _cli(tmp_path, capsys, _cfg(tmp_path), "--resume", str(lavis))
    assert code == 2 and "is not a resume file written by this library" in line


@pytest.mark.parametrize("key,value,message", [("lr_sched", "linear_warmup_cosine", "run.lr_sched"),
                                               ("runner", "runner_fast", "run.runner"),
                                               ("iters_per_epoch", 0, "run.iters_per_epoch must be >= 1")])
def test_bad_run_values_before_any_work(tmp_path, capsys, no_work, key, value, message):
    cfg = _cfg(tmp_path)
    cfg["run"][key] = value
    code, line, _ = _cli(tmp_path, capsys, cfg)
    assert code == 2 and message in line


def test_missing_required_run_key(tmp_path, capsys, no_work):
    cfg = _cfg(tmp_path)
    del cfg["run"]["init_lr"]
    code, line, _ = _cli(tmp_path, capsys, cfg)
    assert code == 2 and "run.init_lr is required" in line


def test_a_new_run_does_not_overwrite_a_finished_one(tmp_path, capsys, no_work):
    job = tmp_path / "out" / "job"
    job.mkdir(parents=True)
    (job / "resume.pt").write_bytes(b"the previous run")
    code, line, _ = _cli(tmp_path, capsys, _cfg(tmp_path))
    assert code == 2 and "already holds a run" in line and "--resume auto" in line and "--overwrite" in line
    assert (job / "resume.pt").read_bytes() == b"the previous run"
    # --overwrite goes on (as far as building the model here), with a warning
    with pytest.raises(AssertionError, match="work started"):
        train.cli(["--cfg-path", str(tmp_path / "cfg.yaml"), "--overwrite"])


def test_options_given_twice_are_all_applied(tmp_path, capsys, no_work):
    code, line, _ = _cli(tmp_path, capsys, _cfg(tmp_path), "--options", "run.max_epoch=2",
                         "--options", "run.iters_per_epoch=0")
    assert code == 2 and "run.iters_per_epoch must be >= 1" in line


@pytest.mark.parametrize("section", ["model", "datasets"])
def test_a_config_without_a_section(tmp_path, capsys, no_work, section):
    cfg = _cfg(tmp_path)
    del cfg[section]
    code, line, _ = _cli(tmp_path, capsys, cfg)
    assert code == 2 and f"no {section}: section" in line


def test_prompt_files_and_templates_that_cannot_work(tmp_path, capsys, no_work):
    two = tmp_path / "two.txt"
    two.write_text("<Img><ImageHere></Img> fine\n<Img><ImageHere></Img> and <ImageHere>\n")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00<ImageHere>\x9c")
    for options, says in ((["model.prompt_template=no placeholder"], "model.prompt_template"),
                          ([f"model.prompt_path={tmp_path}"], "is a folder")):
        code, line, _ = _cli(tmp_path, capsys, _cfg(tmp_path), "--options", *options)
        assert code == 2 and says in line, line
    from minigpt4.errors import InvalidFile
    from minigpt4.models.prompting import load_prompt_list

    with pytest.raises(InvalidFile, match="line 2: 2 <ImageHere>"):
        load_prompt_list(two)
    with pytest.raises(InvalidFile, match="not a UTF-8 text file"):
        load_prompt_list(binary)
