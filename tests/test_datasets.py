"""Dataset builders: webdataset shards (laion, cc_sbu), the cc_sbu_align folder, bad data, configs."""
from __future__ import annotations

import json
import logging
import random
import tarfile
from pathlib import Path

import pytest
import torch
import webdataset as wds
from omegaconf import OmegaConf

import minigpt4  # noqa: F401  (registers the builders)
from minigpt4.common.config import Config
from minigpt4.common.registry import registry
from minigpt4.datasets import CCSBUAlignDataset, WebImageTextDataset, build_train_loader
from minigpt4.datasets.skips import SkipCounter
from minigpt4.processors import normalize_caption
from tests.shard_utils import answer_for, jpeg_bytes, truncate_inside_member, write_align, write_shards

REPO = Path(__file__).resolve().parents[1]
PROC = {"vis_processor": {"train": {"name": "blip2_image_train", "image_size": 32}},
        "text_processor": {"train": {"name": "blip_caption"}}}


def web_cfg(storage, **extra):
    return OmegaConf.create({"data_type": "images", "build_info": {"storage": storage}, **PROC, **extra})


def build(name, cfg):
    return registry.get_builder_class(name)(cfg).build_datasets()["train"]


def one_epoch(loader, source=0):
    """Answers of one epoch of an epoch-mode loader (the batch that starts epoch 1 is left out)."""
    seen = []
    while True:
        batch = next(loader)
        if loader.sources[source].epoch > 0:
            return seen
        seen += batch["answer"]


def test_builders_registered_with_original_default_yamls():
    assert {"laion", "cc_sbu", "cc_sbu_align"} <= set(registry.list_builders())
    for name, pattern in [("laion", "/path/to/laion_dataset/{00000..10488}.tar"),
                          ("cc_sbu", "/path/to/cc_sbu_dataset/{00000..01255}.tar"),
                          ("cc_sbu_align", "/path/to/cc_sbu_align/")]:
        builder = registry.get_builder_class(name)
        default = OmegaConf.load(REPO / "minigpt4" / builder.DATASET_CONFIG_DICT["default"])
        assert default.datasets[name].build_info.storage == pattern
        assert default.datasets[name].data_type == "images"


def test_laion_yields_processed_images_and_captions(tmp_path):
    write_shards(tmp_path, 2, 6, png={(1, 2)})
    ds = build("laion", web_cfg(str(tmp_path / "{00000..00001}.tar"), resampled=False, shuffle_buffer=0))
    assert isinstance(ds, WebImageTextDataset) and ds.name == "laion" and not ds.resampled
    samples = list(ds)
    assert sorted(s["answer"] for s in samples) == sorted(answer_for(s, i) for s in range(2) for i in range(6))
    for s in samples:
        assert s["image"].dtype == torch.float32 and s["image"].shape == (3, 32, 32)
        assert set(s) == {"image", "answer"}
    assert ds.counter.take() == {}


def test_storage_list_glob_and_directory(tmp_path):
    write_shards(tmp_path / "a", 2, 3)
    write_shards(tmp_path / "b", 1, 3, prefix="extra")
    for storage in ([str(tmp_path / "a/{00000..00001}.tar"), str(tmp_path / "b/00000.tar")],
                    [str(tmp_path / "a/*.tar"), str(tmp_path / "b")]):
        ds = build("cc_sbu", web_cfg(storage, resampled=False))
        assert len(ds.urls) == 3
        assert len(list(ds)) == 9


def test_storage_matching_nothing_names_dataset_and_pattern(tmp_path):
    pattern = str(tmp_path / "nothing/{00000..00009}.tar")
    with pytest.raises(FileNotFoundError, match=r"datasets\.laion\.build_info\.storage.*nothing/\{00000\.\.00009\}"):
        build("laion", web_cfg(pattern))
    with pytest.raises(FileNotFoundError, match="cc_sbu"):
        build("cc_sbu", web_cfg([str(tmp_path / "none*.tar")]))


def test_partially_present_pattern_warns_and_uses_present(tmp_path, caplog):
    write_shards(tmp_path, 2, 2)
    with caplog.at_level(logging.WARNING):
        ds = build("laion", web_cfg(str(tmp_path / "{00000..00004}.tar")))
    assert len(ds.urls) == 2 and "3 of 5 shards" in caplog.text


def test_missing_processor_is_a_clear_error(tmp_path):
    write_shards(tmp_path, 1, 2)
    cfg = OmegaConf.create({"build_info": {"storage": str(tmp_path / "00000.tar")}})
    with pytest.raises(ValueError, match=r"datasets\.laion\.vis_processor\.train"):
        build("laion", cfg)


def test_caption_falls_back_to_txt(tmp_path):
    rng = random.Random(0)
    with wds.TarWriter(str(tmp_path / "00000.tar")) as sink:
        sink.write({"__key__": "a", "jpg": jpeg_bytes(rng), "json": b"{not json", "txt": "From TXT one"})
        sink.write({"__key__": "b", "jpg": jpeg_bytes(rng), "json": json.dumps({"caption": ""}).encode(),
                    "txt": "From TXT two"})
        sink.write({"__key__": "c", "jpg": jpeg_bytes(rng), "json": json.dumps({"caption": "From JSON"}).encode(),
                    "txt": "ignored"})
        sink.write({"__key__": "d", "jpg": jpeg_bytes(rng), "json": json.dumps({"caption": None}).encode()})
    ds = build("laion", web_cfg(str(tmp_path / "00000.tar"), resampled=False))
    assert sorted(s["answer"] for s in ds) == ["from json", "from txt one", "from txt two"]
    assert ds.counter.take() == {"missing_caption": 1}


def _expected_good(num_shards, per_shard, bad):
    return {answer_for(s, i) for s in range(num_shards) for i in range(per_shard)} - {answer_for(*b) for b in bad}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_bad_data_is_skipped_and_counted_exactly(tmp_path, num_workers):
    shards, per = 4, 50
    bad_images = {(0, 7), (2, 31)}                      # 1% of 200
    no_caption, no_image = {(1, 4)}, {(3, 10)}
    write_shards(tmp_path, shards, per, bad_images=bad_images, no_caption=no_caption, no_image=no_image)
    # shard 2 is cut in the middle of sample 40's .jpg: samples 0..39 stay complete
    kept = truncate_inside_member(tmp_path / "00002.tar", 40 * 3)
    assert kept[-1].endswith("0039.txt")
    lost = {(2, i) for i in range(40, per)}
    ds = build("laion", web_cfg(str(tmp_path / "{00000..00003}.tar"), resampled=False, shuffle_buffer=20))
    loader = build_train_loader({"laion": ds}, batch_size=8, num_workers=num_workers, seed=3)
    seen = one_epoch(loader)
    loader.close()
    assert len(seen) == len(set(seen))
    assert set(seen) == _expected_good(shards, per, bad_images | no_caption | no_image | lost)
    assert loader.skip_counts() == {"bad_image": 2, "missing_caption": 1, "missing_image": 1, "truncated_shard": 1}


def test_tar_cut_at_a_header_boundary_is_detected(tmp_path):
    write_shards(tmp_path, 1, 10)
    path = tmp_path / "00000.tar"
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    path.write_bytes(path.read_bytes()[: members[15].offset])  # exactly where sample 5 starts
    counter = SkipCounter("t")
    ds = build("laion", web_cfg(str(path), resampled=False, shuffle_buffer=0))
    got = [s["answer"] for _, s in ds.stream(counter=counter)]
    assert got == [answer_for(0, i) for i in range(5)]
    assert counter.take() == {"truncated_shard": 1}


def test_unreadable_shard_is_counted(tmp_path):
    write_shards(tmp_path, 1, 3)
    (tmp_path / "00001.tar").write_bytes(b"this is not a tar file" * 10)
    ds = build("laion", web_cfg(str(tmp_path / "{00000..00001}.tar"), resampled=False))
    counter = SkipCounter("t")
    assert len(list(ds.stream(counter=counter))) == 3
    assert counter.take() == {"unreadable_shard": 1}


def test_resampled_stream_is_infinite_and_seeded(tmp_path):
    write_shards(tmp_path, 3, 4)
    ds = build("laion", web_cfg(str(tmp_path / "{00000..00002}.tar"), shuffle_buffer=5))
    assert ds.resampled

    def take(n, **kw):
        it = ds.stream(**kw)
        return [next(it)[1] for _ in range(n)]

    a, b = take(30, seed=1), take(30, seed=1)
    assert [s["answer"] for s in a] == [s["answer"] for s in b]
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))
    assert [s["answer"] for s in take(30, seed=1, rank=1, world_size=2)] != [s["answer"] for s in a]


def test_endless_stream_of_bad_samples_stops_with_an_error(tmp_path, monkeypatch):
    from minigpt4.datasets import webdata

    write_shards(tmp_path, 2, 5, no_caption={(s, i) for s in range(2) for i in range(5)})
    monkeypatch.setattr(webdata, "MAX_DROPPED_IN_A_ROW", 30)
    ds = build("laion", web_cfg(str(tmp_path / "{00000..00001}.tar"), shuffle_buffer=0))
    with pytest.raises(RuntimeError, match="30 samples in a row were skipped.*missing_caption"):
        next(ds.stream(counter=SkipCounter("laion")))


# ---------------------------------------------------------------------- cc_sbu_align
def align_cfg(storage):
    return OmegaConf.create({"data_type": "images", "build_info": {"storage": str(storage)}, **PROC})


def test_align_returns_raw_caption_and_running_image_id(tmp_path):
    write_align(tmp_path, 6)
    ds = build("cc_sbu_align", align_cfg(tmp_path))
    assert isinstance(ds, CCSBUAlignDataset) and len(ds) == 6
    s = ds[2]
    assert s["answer"] == "The image shows item 2. It is Nice!"  # no text processor, as the original
    assert s["image_id"] == 2 and s["image"].shape == (3, 32, 32)


def test_align_missing_images_reported_at_build_time(tmp_path, caplog):
    write_align(tmp_path, 10, missing={1, 4, 5})
    with caplog.at_level(logging.WARNING):
        ds = build("cc_sbu_align", align_cfg(tmp_path))
    assert len(ds) == 7
    assert "3 of 10 entries" in caplog.text and "1001, 1004, 1005" in caplog.text
    assert [a["image_id"] for a in ds.annotations] == [1000, 1002, 1003, 1006, 1007, 1008, 1009]
    assert ds.build_skips == {"missing_image": 3}


def test_align_empty_captions_are_skipped_and_counted(tmp_path, caplog):
    write_align(tmp_path, 4, missing={3})
    ann = json.loads((tmp_path / "filter_cap.json").read_text())
    ann["annotations"][0]["caption"] = ""
    ann["annotations"][1]["caption"] = "  "
    (tmp_path / "filter_cap.json").write_text(json.dumps(ann))
    with caplog.at_level(logging.WARNING):
        ds = build("cc_sbu_align", align_cfg(tmp_path))
    assert [a["image_id"] for a in ds.annotations] == [1002]
    assert ds.build_skips == {"missing_image": 1, "missing_caption": 2}
    assert "2 entries" in caplog.text and "empty caption" in caplog.text


def test_align_bad_storage_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"datasets\.cc_sbu_align\.build_info\.storage"):
        build("cc_sbu_align", align_cfg(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="filter_cap.json"):
        build("cc_sbu_align", align_cfg(tmp_path))


def test_align_broken_image_skipped_in_loader(tmp_path):
    write_align(tmp_path, 12, broken={3}, missing={7})
    ds = build("cc_sbu_align", align_cfg(tmp_path))
    loader = build_train_loader({"cc_sbu_align": ds}, batch_size=11, num_workers=0, seed=0)
    batch = next(loader)
    assert batch["image"].shape == (10, 3, 32, 32) and len(batch["answer"]) == 10
    assert "The image shows item 3. It is Nice!" not in batch["answer"]
    assert loader.skip_counts() == {"missing_image": 1, "bad_image": 1}


# ---------------------------------------------------------------------- the original's train configs
def _stage_cfg(stage: int, tmp_path: Path):
    shards = tmp_path / "laion"
    write_shards(shards, 2, 4)
    write_shards(tmp_path / "cc_sbu", 1, 4, prefix="cc")
    write_align(tmp_path / "align", 4)
    options = {1: [f"datasets.laion.build_info.storage={shards}/{{00000..00001}}.tar",
                   f"datasets.cc_sbu.build_info.storage={tmp_path}/cc_sbu/00000.tar"],
               2: [f"datasets.cc_sbu_align.build_info.storage={tmp_path}/align"]}[stage]
    name = {1: "minigpt4_stage1_pretrain.yaml", 2: "minigpt4_stage2_finetune.yaml"}[stage]
    path = REPO / "train_configs" / name
    if path.exists():
        return Config.load(path, options=options)
    proc = {"vis_processor": {"train": {"name": "blip2_image_train", "image_size": 224}},
            "text_processor": {"train": {"name": "blip_caption"}}}
    datasets = ({"laion": {**proc, "sample_ratio": 115}, "cc_sbu": {**proc, "sample_ratio": 14}} if stage == 1
                else {"cc_sbu_align": proc})
    cfg = {"model": {"arch": "mini_gpt4", "model_type": "pretrain_vicuna0"}, "datasets": datasets,
           "run": {"task": "image_text_pretrain", "seed": 42, "batch_size_train": 2, "num_workers": 0}}
    return Config.load(cfg_dict=cfg, options=options)


@pytest.mark.parametrize("stage", [1, 2])
def test_original_train_configs_build_their_datasets(tmp_path, stage):
    cfg = _stage_cfg(stage, tmp_path)
    names = ["laion", "cc_sbu"] if stage == 1 else ["cc_sbu_align"]
    assert sorted(cfg.datasets_cfg) == sorted(names)
    built = {n: registry.get_builder_class(n)(cfg.datasets_cfg[n]).build_datasets()["train"] for n in names}
    if stage == 1:
        assert cfg.datasets_cfg.laion.resampled is True and cfg.datasets_cfg.laion.shuffle_buffer == 1000
        assert (built["laion"].sample_ratio, built["cc_sbu"].sample_ratio) == (115, 14)
    loader = build_train_loader(built, batch_size=2, num_workers=0, seed=42)
    batch = next(loader)
    loader.close()
    assert batch["image"].shape == (2, 3, 224, 224)
    if stage == 1:
        assert all(a == normalize_caption(a) for a in batch["answer"])
    else:
        assert batch["answer"][0].startswith("The image shows item") and "image_id" in batch
