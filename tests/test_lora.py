"""LoRA on the LLM (model.lora_r > 0): trains with llama_proj, changes the LLM only through the adapters,
round-trips through the trainable-only checkpoint, chats from the config, merges for export."""
from __future__ import annotations

import dataclasses
import io
import json

import pytest
import torch

from fixture_utils import fixture_dirs, model_cfg
from inference_config import draw_scene, write_config
from minigpt4 import chat as chat_cli
from minigpt4 import lora_export
from minigpt4.conversation import Chat, training_conversation
from minigpt4.models import MiniGPT4
from minigpt4.models.checkpoint import CheckpointError, save_trainable
from minigpt4.models.lora import LoraError, lora_settings
from minigpt4.processors import Blip2ImageEvalProcessor

FX = fixture_dirs()[0]
LORA = {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "lora_target_modules": ["q_proj", "v_proj", "down_proj"]}
PROMPT = "###Human: <Img><ImageHere></Img> Describe it. ###Assistant: "


def build(**overrides) -> MiniGPT4:
    torch.manual_seed(0)
    return MiniGPT4.from_config(model_cfg(FX, prompt_template="###Human: {} ###Assistant: ", end_sym="###",
                                          max_txt_len=40, **overrides))


def samples(seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(2, 3, 224, 224, generator=g), "answer": ["a red circle", "two blue squares"],
            "instruction_input": ["<Img><ImageHere></Img> What is it?"] * 2}


def llm_logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model.llama_model(inputs_embeds=batch["inputs_embeds"], attention_mask=batch["attention_mask"]).logits


def set_adapters(model, on: bool) -> None:
    for layer in model.adapters:
        layer.enable_adapters(on)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A LoRA model after 3 AdamW steps, its checkpoint, and the LLM state/logits from before training."""
    model = build(**LORA)
    base_before = {k: v.clone() for k, v in model.llama_model.state_dict().items() if ".lora_" not in k}
    model.eval()
    probe = model.training_inputs(samples(1))
    logits_before = llm_logits(model, probe)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(3):
        loss = model(samples(step))["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    path = save_trainable(tmp_path_factory.mktemp("lora") / "checkpoint_0", model.trainable_state_dict(),
                          model.checkpoint_meta())
    return model, path, base_before, probe, logits_before


def test_lora_changes_the_llm_only_through_the_adapters(trained):
    model, _, base_before, probe, logits_before = trained
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable[-2:] == ["llama_proj.bias", "llama_proj.weight"]
    assert len(trainable) == 2 + 2 * 2 * 3 and all(".lora_" in n for n in trainable[:-2])  # 2 layers x 3 modules
    base_after = {k: v for k, v in model.llama_model.state_dict().items() if ".lora_" not in k}
    assert base_after.keys() == base_before.keys()
    assert all(torch.equal(base_after[k], base_before[k]) for k in base_before)  # bitwise unchanged
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)  # adapters learned
    assert not torch.allclose(llm_logits(model, probe), logits_before)
    set_adapters(model, False)
    try:
        assert torch.equal(llm_logits(model, probe), logits_before)  # without the adapters: the same LLM
    finally:
        set_adapters(model, True)


def test_checkpoint_round_trip_is_strict(trained):
    model, path, *_ = trained
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["lora"] == {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "down_proj"]}
    assert sorted(meta["keys"]) == sorted(model.trainable_state_dict())
    loaded = build(**LORA, ckpt=str(path))
    mine, theirs = model.trainable_state_dict(), loaded.trainable_state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    image = samples()["image"][:1]
    assert loaded.generate(image, [PROMPT], max_new_tokens=6) == model.generate(image, [PROMPT], max_new_tokens=6)
    with pytest.raises(CheckpointError, match="holds LoRA adapter weights .*but model.lora_r is not set"):
        build(ckpt=str(path))
    loaded.lora = dataclasses.replace(loaded.lora, alpha=16)  # as if the config said lora_alpha: 16
    with pytest.raises(CheckpointError, match="model.lora_alpha=8 but the config has model.lora_alpha=16"):
        loaded.load_projection(path)


def test_chat_cli_with_a_lora_checkpoint(trained, tmp_path, monkeypatch, capsys):
    model, path, *_ = trained
    cfg = write_config(tmp_path, ckpt=str(path), **{k: v for k, v in LORA.items() if k != "lora_dropout"})
    draw_scene(1).save(tmp_path / "one.png")
    monkeypatch.setattr("sys.stdin", io.StringIO("What is it?\n/quit\n"))
    code = chat_cli.main(["--cfg-path", str(cfg), "--image", str(tmp_path / "one.png"), "--greedy",
                          "--max-new-tokens", "8", "--device", "cpu"])
    assert code == 0
    conv, images = training_conversation("###Human: {} ###Assistant: ", "###"), []
    chat = Chat(model, vis_processor=None)
    processor = Blip2ImageEvalProcessor(image_size=224)
    chat.upload_img(processor(draw_scene(1)), conv, images)
    chat.ask("What is it?", conv)
    expected, _ = chat.answer(conv, images, max_new_tokens=8, do_sample=False)
    assert expected in capsys.readouterr().out


def test_merged_export_matches_the_adapted_llm(trained, tmp_path):
    model, path, _, probe, _ = trained
    lora_logits = llm_logits(model, probe)
    exported = build(**LORA, ckpt=str(path))
    lora_export.export(exported, tmp_path / "merged")
    assert not any(".lora_" in n for n, _ in exported.llama_model.named_parameters())
    merged = build(llama_model=str(tmp_path / "merged"), ckpt=str(tmp_path / "merged" / "projection.safetensors"))
    assert torch.allclose(llm_logits(merged, probe), lora_logits, atol=1e-5)
    assert merged.generate(samples()["image"][:1], [PROMPT], max_new_tokens=6) == \
        model.generate(samples()["image"][:1], [PROMPT], max_new_tokens=6)


def test_bad_lora_settings_are_one_clear_error():
    cpu = torch.device("cpu")
    assert lora_settings({"lora_r": 0}, cpu) is None
    with pytest.raises(LoraError, match="model.lora_r with model.low_resource .* needs a CUDA device"):
        lora_settings({"lora_r": 8, "low_resource": True}, cpu)
    with pytest.raises(LoraError, match="model.lora_dropout must be"):
        lora_settings({"lora_r": 8, "lora_dropout": 1.5}, cpu)
    with pytest.raises(LoraError, match="model.lora_target_modules=\\['wq'\\]: none of them"):
        build(lora_r=4, lora_target_modules=["wq"])


def test_export_cli_refuses_a_non_empty_out_in_one_line(tmp_path, capsys):
    from minigpt4 import lora_export

    (tmp_path / "kept.txt").write_text("x")
    with pytest.raises(SystemExit) as info:
        lora_export.main(["--cfg-path", "eval_configs/tiny_eval_lora.yaml", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and f"--out {tmp_path} is not empty" in err[0], err


def test_export_cli_refuses_a_file_for_out_in_one_line(tmp_path, capsys):
    from minigpt4 import lora_export

    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    for out in (notes, notes / "merged"):
        with pytest.raises(SystemExit) as info:
            lora_export.main(["--cfg-path", "eval_configs/tiny_eval_lora.yaml", "--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert info.value.code == 2 and len(err) == 1 and err[0].startswith(
            f"python -m minigpt4.lora_export: error: --out {out}: "), err
    assert notes.read_text() == "x"


def test_export_refuses_adapters_that_were_never_trained(tmp_path):
    untrained = build(**LORA)  # e.g. model.ckpt pointing at a projection-only stage-1 checkpoint
    with pytest.raises(lora_export.inference.UsageError, match="no trained LoRA adapters"):
        lora_export.export(untrained, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
