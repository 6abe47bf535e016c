"""Training data that is odd rather than broken: a member twice in one sample, compressed shards, 16-bit
images, captions that are not UTF-8, huge images. Each is either read correctly or skipped and counted."""
from __future__ import annotations

import gzip
import io
import json
import random
import tarfile

import numpy as np
import pytest
import torch
import webdataset as wds
from omegaconf import OmegaConf
from PIL import Image

import minigpt4  # noqa: F401  (registers the builders)
from minigpt4.common.config import Config, ConfigError
from minigpt4.common.registry import registry
from minigpt4.datasets import build_train_loader
from minigpt4.datasets.skips import SkipCounter
from minigpt4.processors import Blip2ImageEvalProcessor
from tests.shard_utils import answer_for, jpeg_bytes, write_align, write_shards

PROC = {"vis_processor": {"train": {"name": "blip2_image_eval", "image_size": 16}},
        "text_processor": {"train": {"name": "blip_caption"}}}


def build(name, storage, **extra):
    cfg = OmegaConf.create({"data_type": "images", "build_info": {"storage": str(storage)}, **PROC, **extra})
    return registry.get_builder_class(name)(cfg).build_datasets()["train"]


def read_all(ds):
    counter = SkipCounter("t")
    samples = [s for _, s in ds.stream(counter=counter)]
    return samples, counter.take()


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_a_sample_with_a_duplicated_member_is_skipped_and_counted(tmp_path):
    rng = random.Random(0)
    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        for key in ("a", "b", "c"):
            add_member(tar, f"{key}.jpg", jpeg_bytes(rng))
            add_member(tar, f"{key}.txt", f"caption {key}".encode())
            if key == "b":  # a second b.txt: which caption belongs to the image cannot be known
                add_member(tar, "b.txt", b"another caption")
    samples, skipped = read_all(build("laion", tmp_path / "00000.tar", resampled=False, shuffle_buffer=0))
    assert [s["answer"] for s in samples] == ["caption a", "caption c"]
    assert skipped == {"bad_sample": 1}


def test_compressed_shards_are_read_whole(tmp_path):
    write_shards(tmp_path / "plain", 2, 5)
    (tmp_path / "packed").mkdir()
    for i, suffix in enumerate((".tar.gz", ".tgz")):
        data = (tmp_path / "plain" / f"{i:05d}.tar").read_bytes()
        (tmp_path / "packed" / f"{i:05d}{suffix}").write_bytes(gzip.compress(data))
    ds = build("laion", tmp_path / "packed", resampled=False, shuffle_buffer=0)  # a folder: .tar.gz and .tgz too
    assert len(ds.urls) == 2
    samples, skipped = read_all(ds)
    assert skipped == {}
    assert sorted(s["answer"] for s in samples) == sorted(answer_for(s, i) for s in range(2) for i in range(5))
    plain, _ = read_all(build("laion", tmp_path / "plain", resampled=False, shuffle_buffer=0))
    images = {s["answer"]: s["image"] for s in plain}
    assert all(torch.equal(s["image"], images[s["answer"]]) for s in samples)


def test_a_truncated_compressed_shard_keeps_its_complete_samples(tmp_path):
    write_shards(tmp_path, 1, 20)
    packed = gzip.compress((tmp_path / "00000.tar").read_bytes())
    (tmp_path / "00000.tar.gz").write_bytes(packed[: len(packed) // 2])
    samples, skipped = read_all(build("laion", tmp_path / "00000.tar.gz", resampled=False, shuffle_buffer=0))
    assert skipped.pop("truncated_shard") == 1 and set(skipped) <= {"missing_caption", "missing_image"}
    assert 0 < len(samples) < 20
    assert [s["answer"] for s in samples] == [answer_for(0, i) for i in range(len(samples))]


def test_16_bit_png_trains_as_its_picture(tmp_path):
    grey16 = Image.fromarray(np.full((16, 16), 30000, np.uint16))
    with wds.TarWriter(str(tmp_path / "00000.tar")) as sink:
        sink.write({"__key__": "k", "png": png_bytes(grey16), "txt": "grey"})
    samples, skipped = read_all(build("laion", tmp_path / "00000.tar", resampled=False, shuffle_buffer=0))
    expected = Blip2ImageEvalProcessor(16)(Image.new("RGB", (16, 16), (117, 117, 117)))  # 30000 / 65535 * 255
    assert skipped == {} and torch.equal(samples[0]["image"], expected)


def test_a_caption_that_is_not_utf8_is_skipped_with_a_reason(tmp_path, caplog):
    rng = random.Random(0)
    with wds.TarWriter(str(tmp_path / "00000.tar")) as sink:
        sink.write({"__key__": "latin1", "jpg": jpeg_bytes(rng), "txt": "un café".encode("cp1252")})
        sink.write({"__key__": "bom", "jpg": jpeg_bytes(rng), "txt": "\ufeffun café".encode("utf-8")})
        sink.write({"__key__": "jsonbad", "jpg": jpeg_bytes(rng), "json": '{"caption": "é"}'.encode("cp1252")})
        sink.write({"__key__": "jsonok", "jpg": jpeg_bytes(rng), "txt": b"\xff\xfe",
                    "json": json.dumps({"caption": "from json"}).encode()})
    samples, skipped = read_all(build("laion", tmp_path / "00000.tar", resampled=False, shuffle_buffer=0))
    assert [s["answer"] for s in samples] == ["un café", "from json"]
    assert skipped == {"bad_caption": 2}
    assert "00000.tar:latin1: .txt is not UTF-8 (unexpected end of data at byte 6)" in caplog.text


def test_images_over_max_image_pixels_are_skipped_before_decoding(tmp_path):
    rng = random.Random(0)
    with wds.TarWriter(str(tmp_path / "00000.tar")) as sink:
        sink.write({"__key__": "small", "jpg": jpeg_bytes(rng, size=40), "txt": "small"})
        big = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 60, 3), dtype=np.uint8))
        sink.write({"__key__": "big", "png": png_bytes(big)[:200], "txt": "big"})  # header only: never decoded
    samples, skipped = read_all(build("laion", tmp_path / "00000.tar", resampled=False, shuffle_buffer=0,
                                      max_image_pixels=2000))
    assert [s["answer"] for s in samples] == ["small"] and skipped == {"image_too_large": 1}
    # the default (40 MP) lets both through to decoding: the cut PNG is then a bad image
    _, skipped = read_all(build("laion", tmp_path / "00000.tar", resampled=False, shuffle_buffer=0))
    assert skipped == {"bad_image": 1}


def test_align_images_over_the_limit_and_odd_modes(tmp_path):
    root = write_align(tmp_path / "align", 4, size=64)
    Image.fromarray(np.full((64, 64), 65535, np.uint16)).save(root / "image" / "1001.png")
    (root / "image" / "1001.jpg").unlink()
    Image.new("RGB", (80, 80)).save(root / "image" / "1002.jpg")
    ds = build("cc_sbu_align", root, max_image_pixels=64 * 64)
    loader = build_train_loader({"cc_sbu_align": ds}, batch_size=4, num_workers=0, seed=0)
    batch = next(loader)
    loader.close()
    assert loader.skip_counts() == {"image_too_large": 1}
    assert sorted(batch["image_id"].tolist()) == [0, 1, 3]
    white = Blip2ImageEvalProcessor(16)(Image.new("RGB", (64, 64), (255, 255, 255)))
    assert torch.equal(ds.load(1)["image"], white)  # 65535 is white, not a clipped accident


def test_max_image_pixels_is_a_declared_dataset_key(tmp_path):
    cfg = {"datasets": {"laion": {"build_info": {"storage": str(tmp_path)}, "max_image_pixels": 1000}}}
    assert Config.load(cfg_dict=cfg).datasets_cfg.laion.max_image_pixels == 1000
    cfg["datasets"]["laion"]["max_image_pixels"] = "big"
    with pytest.raises(ConfigError, match="datasets.laion.max_image_pixels"):
        Config.load(cfg_dict=cfg)
    write_shards(tmp_path, 1, 2)
    with pytest.raises(ValueError, match="datasets.laion.max_image_pixels must be >= 1"):
        build("laion", tmp_path / "00000.tar", max_image_pixels=0)
