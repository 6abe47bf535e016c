"""Model behaviour beyond the fixture numbers: variants, HF BLIP-2 folders, batched generation, devices."""
from __future__ import annotations

import json

import pytest
import sentencepiece as spm
import torch
from safetensors.torch import save_file

from minigpt4.testing.golden import FIXTURES, inputs, model_cfg
from minigpt4.models import MiniGPT4, build_vision_tower
from minigpt4.models.llm import parse_dtype, quantization_config

FX = FIXTURES / "minigpt4_tiny"
PROMPTS = ["###Human: <Img><ImageHere></Img> Describe this image in detail. ###Assistant: ",
           "<Img><ImageHere></Img> Hi ###Assistant: "]


@pytest.fixture(scope="module")
def model():
    return MiniGPT4.from_config(model_cfg(FX))


def test_tokenizer_matches_sentencepiece_model(model):
    sp = spm.SentencePieceProcessor(model_file=str(FX / "llm" / "tokenizer.model"))
    assert len(model.llama_tokenizer) == sp.get_piece_size()
    text = "a red circle and a blue square"
    assert model.llama_tokenizer(text, add_special_tokens=False).input_ids == sp.encode(text)


def test_frozen_parts_stay_frozen_and_in_eval(model):
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["llama_proj.bias", "llama_proj.weight"]
    model.train()
    assert not model.llama_model.training and not model.vision.vision_model.training
    assert not model.vision.qformer.training and model.training
    model.eval()


def test_llama2_variant_groups_four_consecutive_patches():
    m = MiniGPT4.from_config(model_cfg(FX, has_qformer=False, ckpt=None, q_former_model=None))
    px = inputs(FX)["pixel_values"]
    with torch.no_grad():
        patches = m.vision.image_embeds(px)[:, 1:]
        feats = m.encode_features(px)
        embeds, atts = m.encode_img(px)
    width = patches.shape[-1]
    assert feats.shape == (2, patches.shape[1] // 4, 4 * width) and m.vision.num_tokens == feats.shape[1]
    torch.testing.assert_close(feats[:, 1], torch.cat([patches[:, i] for i in range(4, 8)], dim=-1))
    assert m.llama_proj.in_features == 4 * width and embeds.shape[1] == feats.shape[1]
    out = m({"image": px, "answer": ["a cat", "a dog"]})
    assert torch.isfinite(out["loss"])


def test_hf_blip2_folder_gives_the_same_tower(tmp_path, model):
    from transformers import Blip2Config

    tower = model.vision
    cfg = Blip2Config(vision_config=tower.vision_model.config.to_dict(),
                      qformer_config=tower.qformer.config.to_dict(),
                      text_config={"model_type": "opt", "hidden_size": 16, "num_hidden_layers": 1,
                                   "ffn_dim": 16, "num_attention_heads": 2, "word_embed_proj_dim": 16},
                      num_query_tokens=tower.num_tokens)
    cfg.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in tower.state_dict().items()}
    state["language_projection.weight"] = torch.zeros(16, tower.feature_dim)
    save_file(state, str(tmp_path / "model.safetensors"))
    rebuilt = build_vision_tower(model_cfg(FX, vit_ckpt=None, q_former_model=str(tmp_path),
                                           vit_config=None, qformer_config=None, num_query_token=None))
    px = inputs(FX)["pixel_values"]
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(px), tower(px), atol=1e-5, rtol=1e-5)


def test_batched_generation_equals_one_by_one(model):
    px = inputs(FX)["pixel_values"]
    kw = dict(max_new_tokens=12, do_sample=False, stop_strings=[])
    batch = model.generate(px, PROMPTS, **kw)
    single = [model.generate(px[i : i + 1], [PROMPTS[i]], **kw)[0] for i in range(2)]
    assert batch == single and all(batch)


def test_each_row_stops_at_its_own_stop_string(model):
    px = inputs(FX)["pixel_values"]
    free = model.generate(px, PROMPTS, max_new_tokens=12, do_sample=False, stop_strings=[])
    out0 = model.generate_ids(*_context(model, px), max_new_tokens=12, stop_strings=[])[0]
    pieces = [model.llama_tokenizer.decode([int(t)]) for t in out0]
    stop = next(p.strip() for p in pieces[2:] if p.strip() and p.strip() not in free[1])
    stopped = model.generate(px, PROMPTS, max_new_tokens=12, do_sample=False, stop_strings=[stop])
    assert stopped[0] == free[0][: free[0].index(stop)].strip()
    assert stopped[1] == free[1]


def _context(model, px):
    from minigpt4.models.prompting import embed_layout

    layout, att = model.context_layout(PROMPTS, [1, 1])
    embeds = embed_layout(layout, model.encode_img(px)[0], model.embed_tokens)
    return embeds, att


def test_generated_text_never_carries_eos(model):
    eos = model.llama_tokenizer.eos_token_id
    ids = torch.tensor(model.llama_tokenizer("a red circle", add_special_tokens=False).input_ids + [eos, 300])
    assert model.decode(ids) == "a red circle"


def test_dtype_and_quantization_follow_the_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert parse_dtype(None, cpu) is torch.float32 and parse_dtype("auto", cuda) is torch.float16
    assert parse_dtype("bf16", cuda) is torch.bfloat16
    with pytest.raises(ValueError, match="low_resource.*CUDA"):
        quantization_config(True, False, cpu)
    assert quantization_config(False, False, cpu) is None


def test_low_resource_on_cpu_is_a_clear_error():
    with pytest.raises(ValueError, match="low_resource"):
        MiniGPT4.from_config(model_cfg(FX, low_resource=True))


def test_feature_cache_serves_repeats_exactly(model):
    from minigpt4.models.feature_cache import FeatureCache

    px = inputs(FX)["pixel_values"]
    with torch.no_grad():
        reference = model.encode_features(px)
    model.feature_cache = FeatureCache(max_items=8)
    try:
        with torch.no_grad():
            first = model.encode_features(px)
            mixed = model.encode_features(torch.stack([px[1], px[0].flip(-1), px[0]]))
        assert torch.equal(first, reference)
        assert model.feature_cache.hits == 2 and model.feature_cache.misses == 3
        torch.testing.assert_close(mixed[0], reference[1], atol=0, rtol=0)
        torch.testing.assert_close(mixed[2], reference[0], atol=0, rtol=0)
        assert not torch.allclose(mixed[1], reference[0])
    finally:
        model.feature_cache = None
