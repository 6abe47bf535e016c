"""The tiny world's frozen backbones are written in the formats real users load."""
from __future__ import annotations

from dataclasses import replace

import torch
from omegaconf import OmegaConf

from minigpt4.tiny_world import text as T
from minigpt4.tiny_world.lm import (LMSpec, Segmenter, build_lm, caption_context, chat_context, greedy, left_pad,
                                    pretrain_lm, sentencepiece_size, soft_embeds, soft_slots, write_tokenizer)
from minigpt4.tiny_world.scenes import Scene
from minigpt4.tiny_world.vision import Heads, ImageStream, VisionSpec, loss_and_accuracy, pretrain_vision, targets
from minigpt4.tiny_world.write import scenes


def test_language_model_folder_loads_with_from_pretrained(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = LMSpec(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, batch_size=4, max_steps=3,
                  min_steps=3, eval_every=3)
    report = pretrain_lm(tmp_path / "llm", spec)
    assert report["steps"] == 3 and set(report["copy_accuracy"]) >= {"caption", "chat", "describe", "chat_slots"}
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "llm"))
    # the language model reads the object list under the curation's own describe prompt, as MiniGPT4 lays it out
    from minigpt4.curate.describe import first_prompt
    from minigpt4.curate.config import DEFAULTS

    scene, seg = scenes(0, "check", 1, spec.world)[0], Segmenter(tok)
    before, after = first_prompt(OmegaConf.create(DEFAULTS["describe"])).split("<ImageHere>")
    assert chat_context(seg, scene, None) == [tok.bos_token_id] + seg(before) + seg(T.header(scene)) + seg(after)
    assert len(tok) == sentencepiece_size(tmp_path / "llm") and len(tok) > 256  # not the empty-tokenizer trap
    for symbol in ("###", "<Img>", "</Img>", "<ImageHere>", "$$"):
        assert tok.convert_ids_to_tokens(tok(symbol, add_special_tokens=False).input_ids) == [symbol]
    ids = tok("a red circle and a blue square\n", add_special_tokens=False).input_ids
    assert ids and tok.decode(ids) == "a red circle and a blue square\n"
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "llm"))
    assert model.config.vocab_size == len(tok) and model.config.tie_word_embeddings
    # the tokenizer is trained once from a fixed corpus: a second build gives the same model file
    pretrain_lm(tmp_path / "again", spec)
    assert (tmp_path / "llm" / "tokenizer.model").read_bytes() == (tmp_path / "again" / "tokenizer.model").read_bytes()


def test_vision_tower_exports_original_files_that_the_model_config_loads(tmp_path):
    from minigpt4.models.minigpt4 import build_vision_tower

    spec = VisionSpec(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, qformer_layers=1,
                      num_query_token=4, batch_size=8, max_steps=2, min_steps=2, eval_every=2)
    report = pretrain_vision(tmp_path, spec)
    assert report["steps"] == 2 and {"colour", "shape", "size", "column"} <= set(report["accuracy"])
    cfg = OmegaConf.create({"vit_ckpt": str(tmp_path / "eva_vit.pth"), "q_former_model": str(tmp_path / "blip2_qformer.pth"),
                            "image_size": 112, "vit_config": spec.vit_config(), "qformer_config": spec.qformer_config(),
                            "num_query_token": 4})
    tower = build_vision_tower(cfg)
    pixels, _ = ImageStream(0, "check", spec.world).batch(2)
    with torch.no_grad():
        features = tower(pixels)
    assert features.shape == (2, 4, 32)
    # a second run from the same seed writes the same weights
    pretrain_vision(tmp_path / "again", replace(spec))
    a = torch.load(tmp_path / "blip2_qformer.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "again" / "blip2_qformer.pth", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_vision_heads_give_each_group_of_query_tokens_one_slot():
    heads = Heads(hidden=4, tokens=8, slots=2, grid=7)
    assert heads.slot_of.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    one = Scene.from_json([{"colour": "red", "shape": "circle", "size": "large", "col": 2, "row": 3}])
    two = Scene.from_json([{"colour": "blue", "shape": "square", "size": "small", "col": 1, "row": 2},
                           {"colour": "green", "shape": "triangle", "size": "large", "col": 5, "row": 4}])
    t = targets([one, two], slots=2)

    def logits_from(slot_of):  # a head that names, at each token, the object of slot ``slot_of[token]``
        out = {}
        for k, n in heads.sizes.items():
            target = t[k].clone()
            if k == "column":
                target[target < 0] = n
            out[k] = torch.nn.functional.one_hot(target[:, slot_of], n + 1).float() * 10
        out["presence"] = t["presence"] * 20 - 10
        return out

    heads.forward = lambda feats: logits_from(heads.slot_of)
    _, right = loss_and_accuracy(heads, torch.zeros(2, 8, 4), t)
    assert all(right[k] == 1.0 for k in ("colour", "shape", "size", "column", "presence"))
    swapped = heads.slot_of.clone()
    swapped[3] = 1  # one token of the left group reads the right object: the left slot is wrong everywhere
    heads.forward = lambda feats: logits_from(swapped)
    _, wrong = loss_and_accuracy(heads, torch.zeros(2, 8, 4), t)
    assert wrong["colour"] == 0.5  # 2 images x 2 slots, the two left slots now wrong


def test_slot_vectors_are_laid_out_as_the_vision_towers_query_groups(tmp_path):
    from transformers import AutoTokenizer

    spec = LMSpec(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    write_tokenizer(tmp_path, spec)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    seg, word = Segmenter(tok), lambda w: tok.convert_tokens_to_ids("\u2581" + w)
    one = Scene.from_json([{"colour": "red", "shape": "circle", "size": "large", "col": 2, "row": 3}])
    two = Scene.from_json([{"colour": "blue", "shape": "square", "size": "small", "col": 1, "row": 2},
                           {"colour": "green", "shape": "triangle", "size": "large", "col": 5, "row": 4}])
    slots = soft_slots(seg, two, 8, 2)
    left, right = [word("small"), word("blue"), word("square")], [word("large"), word("green"), word("triangle")]
    assert slots == [left] * 4 + [right] * 4  # the groups of Heads.slot_of, left to right
    assert soft_slots(seg, one, 8, 2)[4:] == [[tok.convert_tokens_to_ids(".")]] * 4  # an empty slot
    assert soft_slots(seg, two, 6, 2) == [left] * 3 + [right] * 3

    torch.manual_seed(0)
    model = build_lm(spec, len(tok)).eval()
    context = chat_context(seg, two, T.INSTRUCTIONS[0], (8, 2))
    before = chat_context(seg, two, T.INSTRUCTIONS[0])[: context.spec[0][0]]
    assert context[: len(before)] == before and [p for p, _ in context.spec] == list(range(len(before), len(before) + 8))
    table = model.get_input_embeddings().weight
    embeds = soft_embeds(model, torch.tensor([context]), [(context, 0)], 0.0)[0]
    assert torch.equal(embeds[len(before)], table[left].sum(0)) and torch.equal(embeds[len(before) + 7], table[right].sum(0))
    assert torch.equal(embeds[: len(before)], table[before])
    noisy = soft_embeds(model, torch.tensor([context]), [(context, 0)], 0.2)[0]
    assert torch.equal(noisy[: len(before)], embeds[: len(before)]) and not torch.equal(noisy, embeds)

    # left-padded next to a longer text context, the slot vectors move with their row
    stops = {tok.eos_token_id}
    longer = chat_context(seg, two, T.INSTRUCTIONS[1])
    shift = len(longer) - len(context)
    assert shift > 0
    padded, att = left_pad([longer, context], 0)
    assert att[1].tolist() == [0] * shift + [1] * len(context) and padded[0].spec == []
    rows = soft_embeds(model, torch.tensor(padded), [(c, 0) for c in padded], 0.0)
    assert torch.equal(rows[1, shift:], embeds)
    with torch.no_grad():  # the model reads the padded row as the row alone
        alone = model(inputs_embeds=embeds[None]).logits[0, -1]
        in_batch = model(inputs_embeds=rows, attention_mask=att).logits[1, -1]
        assert torch.allclose(alone, in_batch, atol=1e-4)
        answers = greedy(model, [longer, context, caption_context(seg, one, (8, 2))], 0, 6, stops)
    assert len(answers) == 3 and all(0 < len(a) <= 6 for a in answers)  # new tokens only, as for text contexts


def test_a_preset_whose_language_model_reads_another_layout_is_refused():
    import pytest

    from minigpt4.tiny_world.presets import FULL

    with pytest.raises(ValueError, match="lm.image_tokens .12. must be the vision tower's num_query_token .8."):
        replace(FULL, lm=replace(FULL.lm, image_tokens=12))
