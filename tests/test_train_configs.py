"""The shipped train configs carry the original V1 values and pass validation."""
from __future__ import annotations

from pathlib import Path

import pytest

from minigpt4.common.config import Config
from minigpt4.common.registry import registry

REPO = Path(__file__).resolve().parents[1]
STAGE1 = dict(lr_sched="linear_warmup_cosine_lr", init_lr=1e-4, min_lr=8e-5, warmup_lr=1e-6, weight_decay=0.05,
              max_epoch=4, iters_per_epoch=5000, warmup_steps=5000, batch_size_train=64, num_workers=4, seed=42,
              amp=True, task="image_text_pretrain", distributed=True, device="cuda")
STAGE2 = dict(STAGE1, init_lr=3e-5, min_lr=1e-5, max_epoch=5, iters_per_epoch=200, warmup_steps=200,
              batch_size_train=12)


@pytest.mark.parametrize("name,model_type", [("minigpt4_stage1_pretrain", "pretrain_vicuna0"),
                                             ("minigpt4_stage1_pretrain_llama2", "pretrain_llama2")])
def test_stage1(name, model_type):
    cfg = Config.load(REPO / "train_configs" / f"{name}.yaml").config
    assert (cfg.model.arch, cfg.model.model_type) == ("minigpt4", model_type)
    assert {k: cfg.run[k] for k in STAGE1} == STAGE1
    assert cfg.run.output_dir == "output/minigpt4_stage1_pretrain"
    assert (cfg.datasets.laion.sample_ratio, cfg.datasets.cc_sbu.sample_ratio) == (115, 14)
    assert cfg.model.llama_model.startswith("/path/to/")
    assert "prompt_path" not in cfg.model or not cfg.model.prompt_path


@pytest.mark.parametrize("name,model_type,template,end_sym", [
    ("minigpt4_stage2_finetune", "pretrain_vicuna0", "###Human: {} ###Assistant: ", "###"),
    ("minigpt4_stage2_finetune_llama2", "pretrain_llama2", "[INST] {} [/INST] ", "</s>")])
def test_stage2(name, model_type, template, end_sym):
    cfg = Config.load(REPO / "train_configs" / f"{name}.yaml").config
    assert (cfg.model.arch, cfg.model.model_type) == ("minigpt4", model_type)
    assert {k: cfg.run[k] for k in STAGE2} == STAGE2
    assert (cfg.model.prompt_template, cfg.model.end_sym, cfg.model.max_txt_len) == (template, end_sym, 160)
    assert cfg.model.prompt_path == "prompts/alignment.txt" and cfg.model.ckpt.startswith("/path/to/")
    assert list(cfg.datasets) == ["cc_sbu_align"]
    assert registry.get_runner_class(cfg.run.get("runner", "runner_base"))


def test_alignment_prompts():
    lines = (REPO / "prompts" / "alignment.txt").read_text().splitlines()
    assert lines == ["<Img><ImageHere></Img> Describe this image in detail.",
                     "<Img><ImageHere></Img> Take a look at this image and describe what you notice.",
                     "<Img><ImageHere></Img> Please provide a detailed description of the picture.",
                     "<Img><ImageHere></Img> Could you describe the contents of this image for me?"]
