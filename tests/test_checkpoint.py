"""Checkpoint conversion, strict loading, and clear refusals."""
from __future__ import annotations

import pytest
import torch

from minigpt4.testing.golden import FIXTURES, fixture_config, model_cfg
from minigpt4.models import MiniGPT4, build_vision_tower
from minigpt4.models import checkpoint as ck

FX = FIXTURES / "minigpt4_tiny"


@pytest.fixture(scope="module")
def model():
    return MiniGPT4.from_config(model_cfg(FX))


def test_original_files_round_trip(tmp_path, model):
    ck.export_original(model.vision, tmp_path / "eva.pth", tmp_path / "blip2.pth", vit_dtype=torch.float32)
    eva = torch.load(tmp_path / "eva.pth", weights_only=True)
    original = torch.load(FX / "eva_vit.pth", weights_only=True)
    assert set(eva) == set(original)
    for key in original:
        torch.testing.assert_close(eva[key], original[key].float(), atol=0, rtol=0)
    blip2 = torch.load(tmp_path / "blip2.pth", weights_only=True)["model"]
    kept = set(fixture_config(FX)["files"]["blip2_kept_keys"]) - {"Qformer.bert.embeddings.position_ids"}
    assert set(blip2) == kept
    rebuilt = build_vision_tower(model_cfg(FX, vit_ckpt=str(tmp_path / "eva.pth"),
                                           q_former_model=str(tmp_path / "blip2.pth")))
    for key, value in model.vision.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[key], value, atol=0, rtol=0)


def test_missing_file_names_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model\.vit_ckpt.*eva_vit_g\.pth"):
        build_vision_tower(model_cfg(FX, vit_ckpt=str(tmp_path / "nope.pth")))
    with pytest.raises(FileNotFoundError, match=r"model\.llama_model"):
        MiniGPT4.from_config(model_cfg(FX, llama_model=str(tmp_path / "no_llm")))


def test_projection_of_other_llm_size_is_refused(tmp_path, model):
    torch.save({"model": {"llama_proj.weight": torch.zeros(80, model.llama_proj.in_features),
                          "llama_proj.bias": torch.zeros(80)}}, tmp_path / "big.pth")
    with pytest.raises(ck.CheckpointError, match=r"llama_proj\.weight is \[80, 48\].*another LLM size"):
        model.load_projection(tmp_path / "big.pth")


def test_file_without_matching_keys_is_refused(tmp_path, model):
    torch.save({"model": {"something.else": torch.zeros(3)}}, tmp_path / "other.pth")
    with pytest.raises(ck.CheckpointError, match="none of the keys"):
        model.load_projection(tmp_path / "other.pth")


def test_qformer_file_without_qformer_is_refused(tmp_path):
    torch.save({"model": {"t5_proj.weight": torch.zeros(2, 2)}}, tmp_path / "t5only.pth")
    with pytest.raises(ck.CheckpointError, match="weights missing"):
        build_vision_tower(model_cfg(FX, q_former_model=str(tmp_path / "t5only.pth")))


def test_blip2_unrelated_keys_are_counted_not_errors():
    raw = torch.load(FX / "blip2_qformer.pth", weights_only=True)["model"]
    state, ignored = ck.blip2_to_hf(raw, num_vit_layers=3)
    assert ignored["unrelated to MiniGPT-4 (t5_proj)"] == 2
    assert ignored["Q-Former text head (cls)"] == sum(k.startswith("Qformer.cls.") for k in raw)
    assert not any(k.startswith("t5") for k in state)


def test_safetensors_checkpoint_round_trip(tmp_path, model):
    path = ck.save_trainable(tmp_path / "proj", model.trainable_state_dict(), model.checkpoint_meta())
    assert path.suffix == ".safetensors" and path.with_suffix(".json").exists()
    other = MiniGPT4.from_config(model_cfg(FX, ckpt=str(path)))
    torch.testing.assert_close(other.llama_proj.weight, model.llama_proj.weight, atol=0, rtol=0)


def test_unreadable_torch_files_are_checkpoint_errors_naming_the_file(tmp_path):
    import os
    import pickle

    from minigpt4.models.checkpoint import CheckpointError, load_torch

    good = tmp_path / "good.pth"
    torch.save({"w": torch.ones(2)}, good)
    (tmp_path / "truncated.pth").write_bytes(good.read_bytes()[:100])
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "text.pth").write_text('{"not": "a checkpoint"}')

    class RunsCode:
        def __reduce__(self):
            return (os.getpid, ())

    with open(tmp_path / "code.pth", "wb") as f:
        pickle.dump(RunsCode(), f)
    assert torch.equal(load_torch(good)["w"], torch.ones(2))
    for name, why in (("truncated.pth", "truncated"), ("empty.pth", "empty"), ("text.pth", "not a plain tensor"),
                      ("code.pth", "not a plain tensor"), (".", "is a folder")):
        with pytest.raises(CheckpointError, match=why) as info:
            load_torch(tmp_path / name)
        assert str(tmp_path / name).rstrip("/.") in str(info.value) and "\n" not in str(info.value)
