"""The vision-feature store: extraction (resumable, keyed by sample), training reads it instead of pixels,
and a store made with another tower, processor or image size is refused."""
from __future__ import annotations

import json
import logging

import pytest
import torch
from omegaconf import OmegaConf

import minigpt4  # noqa: F401  (registers the builders)
from fixture_utils import FIXTURES, model_cfg
from minigpt4.common.config import ConfigError
from minigpt4.common.registry import registry
from minigpt4.datasets import skips
from minigpt4.features import store as S
from minigpt4.features.__main__ import main as features_main
from minigpt4.features.extract import extract
from minigpt4.models import MiniGPT4
from minigpt4.processors import build_processor
from shard_utils import write_align, write_shards

FX = FIXTURES / "minigpt4_tiny"
EVAL = {"name": "blip2_image_eval", "image_size": 224}


@pytest.fixture(scope="module")
def model():
    return MiniGPT4.from_config(model_cfg(FX))


def align_builder(storage, vis=EVAL, store=None):
    block = {"build_info": {"storage": str(storage)}, "vis_processor": {"train": vis}}
    if store is not None:
        block["feature_store"] = str(store)
    return registry.get_builder_class("cc_sbu_align")(OmegaConf.create(block))


def pixels_features(model, vis, images):
    proc = build_processor(OmegaConf.create(vis))
    with torch.no_grad():
        return model.encode_features(torch.stack([proc(im) for im in images]))


def test_training_reads_the_towers_output_and_refuses_another_tower_or_processor(tmp_path, model, caplog):
    root = write_align(tmp_path / "align", 5, broken={3})
    ds = align_builder(root).build_datasets()["train"]
    vis_proc, _ = align_builder(root).build_processors()
    with caplog.at_level(logging.WARNING):
        counts = extract(model.vision, ds, vis_proc, EVAL, tmp_path / "store", batch_size=2, shard_size=2)
    assert counts["written"] == 4 and counts["skipped"] == {skips.BAD_IMAGE: 1}

    stored = align_builder(root, store=tmp_path / "store").build_datasets()["train"]
    from minigpt4.images import open_image

    images = [open_image(a["path"]) for a in ds.annotations if a["image_id"] != 1003]
    want = pixels_features(model, EVAL, images)
    got = [stored.load(i)["image_features"] for i in range(5) if i != 3]
    torch.testing.assert_close(torch.stack(got), want, atol=1e-5, rtol=1e-5)
    assert stored.load(0)["answer"] == ds.load(0)["answer"]
    with pytest.raises(skips.SkipSample):
        stored.load(3)
    S.check_stores(model, {"cc_sbu_align": {"train": stored}})  # same tower: accepted

    with pytest.raises(ConfigError, match=r"vis_processor.train: the feature store .* made with processor"):
        align_builder(root, vis={**EVAL, "image_size": 112}, store=tmp_path / "store").build_datasets()
    with pytest.raises(ConfigError, match="crops at random"):
        align_builder(root, vis={"name": "blip2_image_train"}, store=tmp_path / "store").build_datasets()
    query = model.vision.query_tokens
    saved = query.detach().clone()
    try:
        with torch.no_grad():
            query[0, 0, 0] += 1e-3
        with pytest.raises(ConfigError, match="feature_store: the feature store .* another vision tower"):
            S.check_stores(model, {"cc_sbu_align": {"train": stored}})
    finally:
        with torch.no_grad():
            query.copy_(saved)


def test_an_interrupted_extraction_continues_where_it_stopped(tmp_path, model):
    root = write_align(tmp_path / "align", 5)
    ds = align_builder(root).build_datasets()["train"]
    vis_proc, _ = align_builder(root).build_processors()
    out = tmp_path / "store"
    extract(model.vision, ds, vis_proc, EVAL, out, batch_size=4, shard_size=2)
    before = S.FeatureStore(out)
    last = sorted(out.glob("part-*.safetensors"))[-1]
    lost = S.shard_keys(last)
    last.unlink()  # as if the run died before writing this shard
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "complete": False}))
    with pytest.raises(ConfigError, match="did not finish"):
        S.FeatureStore(out)
    counts = extract(model.vision, ds, vis_proc, EVAL, out, batch_size=4, shard_size=2)
    assert counts["written"] == len(lost) and counts["reused"] == 5 - len(lost)
    after = S.FeatureStore(out)
    assert sorted(after.index) == sorted(before.index)
    for key in before.index:
        assert torch.equal(after.get(key), before.get(key))


def test_webdataset_store_and_cli(tmp_path, model):
    urls = [str(p) for p in write_shards(tmp_path / "shards", 2, 3)]
    cfg = {"model": {**OmegaConf.to_container(model_cfg(FX))},
           "datasets": {"laion": {"build_info": {"storage": urls}, "vis_processor": {"train": EVAL},
                                  "text_processor": {"train": {"name": "blip_caption"}}, "resampled": False,
                                  "shuffle_buffer": 0}},
           "run": {"task": "image_text_pretrain", "device": "cpu"}}
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    assert features_main(["extract", "--cfg-path", str(cfg_path), "--out", str(tmp_path / "store")]) == 0
    assert features_main(["extract", "--cfg-path", str(cfg_path), "--out", str(tmp_path / "shards")]) == 2

    block = OmegaConf.create({**cfg["datasets"]["laion"], "feature_store": str(tmp_path / "store")})
    stored = registry.get_builder_class("laion")(block).build_datasets()["train"]
    plain = registry.get_builder_class("laion")(OmegaConf.create(cfg["datasets"]["laion"])).build_datasets()["train"]
    got = list(stored.stream())
    want = list(plain.stream())
    assert [i for i, _ in got] == [i for i, _ in want] and len(got) == 6
    assert [s["answer"] for _, s in got] == [s["answer"] for _, s in want]
    with torch.no_grad():
        direct = model.encode_features(torch.stack([s["image"] for _, s in want]))
    torch.testing.assert_close(torch.stack([s["image_features"] for _, s in got]), direct, atol=1e-5, rtol=1e-5)


def test_a_damaged_shard_is_named_and_extracted_again(tmp_path, model):
    root = write_align(tmp_path / "align", 5)
    ds = align_builder(root).build_datasets()["train"]
    vis_proc, _ = align_builder(root).build_processors()
    out = tmp_path / "store"
    extract(model.vision, ds, vis_proc, EVAL, out, batch_size=4, shard_size=2)
    before = S.FeatureStore(out)
    emptied, cut = sorted(out.glob("part-*.safetensors"))[:2]
    lost = S.shard_keys(emptied) + S.shard_keys(cut)
    emptied.write_bytes(b"")
    cut.write_bytes(cut.read_bytes()[:-10])
    with pytest.raises(ConfigError, match=rf"^feature_store: {emptied}: not a readable feature-store shard "
                                          r"\(header too small\); run the extract command .* again"):
        S.FeatureStore(out)
    counts = extract(model.vision, ds, vis_proc, EVAL, out, batch_size=4, shard_size=2)
    assert counts["written"] == len(lost) and counts["reused"] == 5 - len(lost)
    assert sorted(p.name for p in out.glob("*.unreadable")) == [emptied.name + ".unreadable",
                                                                 cut.name + ".unreadable"]
    after = S.FeatureStore(out)
    assert sorted(after.index) == sorted(before.index)
    for key in before.index:
        assert torch.equal(after.get(key), before.get(key))


def test_an_out_that_is_a_file_is_refused(tmp_path, model):
    root = write_align(tmp_path / "align", 1)
    ds = align_builder(root).build_datasets()["train"]
    vis_proc, _ = align_builder(root).build_processors()
    (tmp_path / "notes.txt").write_text("mine")
    for out, why in ((tmp_path / "notes.txt", "is a file, not a folder"),
                     (tmp_path / "notes.txt" / "store", f"cannot be created, {tmp_path / 'notes.txt'} is a file")):
        with pytest.raises(ConfigError, match=rf"^--out {out}: {why}$"):
            extract(model.vision, ds, vis_proc, EVAL, out)
    assert (tmp_path / "notes.txt").read_text() == "mine"
