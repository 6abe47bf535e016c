"""Batch captioning CLI: batch == one by one, per-row stopping, resume, bad images, shards, refusals."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from minigpt4.testing.golden import draw_scene, write_config
from minigpt4 import caption, inference

ROOT = Path(__file__).resolve().parents[1]
NEW_TOKENS = "12"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("caption")
    images = d / "images"
    (images / "sub").mkdir(parents=True)
    for i in range(10):
        draw_scene(i).save(images / ("sub" if i % 3 == 0 else ".") / f"img{i:02d}.{'png' if i % 2 else 'jpg'}")
    (images / "broken.jpg").write_text("this is not a picture")
    good = (images / "img01.png").read_bytes()
    (images / "cut.png").write_bytes(good[: len(good) // 2])
    (images / "notes.txt").write_text("left out by extension")
    write_config(d)
    return d


def run(workdir, out, *extra):
    argv = ["--cfg-path", str(workdir / "fixture_eval.yaml"), "--images", str(workdir / "images"),
            "--out", str(out), "--max-new-tokens", NEW_TOKENS, "--no-progress", *extra]
    assert caption.main(argv) == 0
    return rows(out)


def rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def by_key(rs):
    keys = [r["key"] for r in rs]
    assert len(keys) == len(set(keys)), "duplicate rows"
    return {r["key"]: r for r in rs}


@pytest.fixture(scope="module")
def batch8(workdir):
    return by_key(run(workdir, workdir / "b8.jsonl", "--batch-size", "8"))


def test_batch_of_8_gives_the_same_text_as_one_by_one(workdir, batch8):
    single = by_key(run(workdir, workdir / "b1.jsonl", "--batch-size", "1"))
    assert single == batch8
    captions = [r["caption"] for r in batch8.values() if "caption" in r]
    assert len(captions) == 10 and all(captions)
    assert len(set(captions)) > 3  # the images really differ in what they produce


def test_bad_images_are_rows_with_a_reason(batch8):
    assert set(batch8) == {f"img{i:02d}.{'png' if i % 2 else 'jpg'}" for i in range(10) if i % 3}.union(
        {f"sub/img{i:02d}.{'png' if i % 2 else 'jpg'}" for i in range(10) if i % 3 == 0}, {"broken.jpg", "cut.png"})
    assert "not a readable image" in batch8["broken.jpg"]["error"] and "caption" not in batch8["broken.jpg"]
    assert "truncated" in batch8["cut.png"]["error"]
    assert batch8["sub/img03.png"]["image"].endswith("images/sub/img03.png")


def test_each_row_stops_at_its_own_end_sym(workdir, batch8):
    free = {k: r["caption"] for k, r in batch8.items() if "caption" in r}
    words = [w for text in free.values() for w in text.split()[1:] if len(w) > 2 and "#" not in w]
    stop = next(w for w in words if 0 < sum(w in t for t in free.values()) < len(free) // 2 + 1)
    stopped = by_key(run(workdir, workdir / "stop.jsonl", "--batch-size", "8", "--options", f"model.end_sym={stop}"))
    hit = 0
    for key, text in free.items():
        if stop in text:
            hit += 1
            assert stopped[key]["caption"] == text[: text.index(stop)].strip(), key
        else:
            assert stopped[key]["caption"] == text, key
    assert 0 < hit < len(free)


def test_second_run_resumes_without_duplicates(workdir, batch8):
    out = workdir / "resume.jsonl"
    lines = (workdir / "b8.jsonl").read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:3]) + lines[3][:10])  # an interrupted run: 3 rows and a cut line
    assert by_key(run(workdir, out, "--batch-size", "4")) == batch8
    first = out.read_text()
    assert by_key(run(workdir, out, "--batch-size", "4")) == batch8
    assert out.read_text() == first


def test_rerun_with_other_settings_is_refused(workdir, batch8, capsys):
    sidecar = workdir / "b8.jsonl.settings.json"
    assert json.loads(sidecar.read_text())["prompt"] is None
    before = (workdir / "b8.jsonl").read_text()
    argv = ["--cfg-path", str(workdir / "fixture_eval.yaml"), "--images", str(workdir / "images"),
            "--out", str(workdir / "b8.jsonl"), "--max-new-tokens", NEW_TOKENS, "--no-progress"]
    with pytest.raises(SystemExit) as exc:
        caption.main([*argv, "--prompt", "What is in the picture?"])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert exc.value.code == 2 and "holds captions made with other settings (different: prompt;" in line
    assert (workdir / "b8.jsonl").read_text() == before
    assert caption.main([*argv, "--batch-size", "3"]) == 0  # the batch size does not change a caption
    assert (workdir / "b8.jsonl").read_text() == before


def test_webdataset_shards(tmp_path, workdir, batch8):
    import webdataset as wds

    for shard in range(2):
        with wds.TarWriter(str(tmp_path / f"part-{shard:03d}.tar")) as sink:
            for i in range(shard * 2, shard * 2 + 2):
                name = f"img{i:02d}.{'png' if i % 2 else 'jpg'}"
                path = workdir / "images" / ("sub" if i % 3 == 0 else ".") / name
                sink.write({"__key__": f"s{i:05d}", name.rsplit(".", 1)[1]: path.read_bytes(),
                            "json": json.dumps({"caption": "x"}).encode()})
            sink.write({"__key__": f"bad{shard}", "jpg": b"not a jpeg"})
            sink.write({"__key__": f"meta{shard}", "json": b"{}"})
    out = tmp_path / "shards.jsonl"
    argv = ["--cfg-path", str(workdir / "fixture_eval.yaml"), "--images", str(tmp_path / "part-{000..001}.tar"),
            "--out", str(out), "--max-new-tokens", NEW_TOKENS, "--no-progress", "--batch-size", "3"]
    assert caption.main(argv) == 0
    got = by_key(rows(out))
    assert set(got) == {"s00000", "s00001", "s00002", "s00003", "bad0", "bad1", "meta0", "meta1"}
    assert got["s00001"]["caption"] == batch8["img01.png"]["caption"]
    assert got["s00000"]["caption"] == batch8["sub/img00.jpg"]["caption"]
    assert got["s00002"]["shard"].endswith("part-001.tar")
    assert "not a readable image" in got["bad0"]["error"] and "no image in the sample" in got["meta1"]["error"]


def test_missing_shards_and_bad_devices_are_clear_errors(tmp_path, workdir, capsys):
    base = ["--cfg-path", str(workdir / "fixture_eval.yaml"), "--out", str(tmp_path / "x.jsonl")]
    cases = [(["--images", str(tmp_path / "none-{0..3}.tar")], "4 shard(s) do not exist"),
             (["--images", str(workdir / "images"), "--device", "cuda"], "no CUDA device"),
             (["--images", str(workdir / "images"), "--device-map", "auto"], "model.device_map"),
             (["--images", str(workdir / "images"), "--options", "model.vit_ckpt=/nowhere/eva.pth"],
              "model.vit_ckpt: /nowhere/eva.pth does not exist")]
    for extra, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            caption.main(base + extra)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_8bit_loading_on_cpu_is_refused_by_the_cli(tmp_path, workdir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "minigpt4.caption", "--cfg-path", str(workdir / "fixture_eval.yaml"),
                           "--images", str(workdir / "images"), "--out", str(tmp_path / "x.jsonl"),
                           "--device", "cpu", "--low-resource"], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "model.low_resource / model.load_in_4bit" in proc.stderr and "CUDA" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_prompt_and_processor_choice():
    cfg = OmegaConf.create({"prompt_template": "[INST] {} [/INST] "})
    assert inference.caption_prompt(cfg) == "[INST] <Img><ImageHere></Img> Describe this image in detail. [/INST] "
    assert inference.caption_prompt(cfg, "What is red?") == "[INST] <Img><ImageHere></Img> What is red? [/INST] "
    assert inference.caption_prompt(cfg, "<ImageHere> as is") == "<ImageHere> as is"
    assert inference.caption_prompt(OmegaConf.create({})) is None  # stage 1: the image alone
    both = OmegaConf.create({"preprocess": {"vis_processor": {"eval": {"name": "blip2_image_eval", "image_size": 224}}},
                             "datasets": {"cc_sbu_align": {"vis_processor": {"train": {"name": "blip2_image_train",
                                                                                       "image_size": 64}}}},
                             "model": {"image_size": 64}})
    assert inference.vis_processor_config(both) == {"name": "blip2_image_eval", "image_size": 64}
    both.model.image_size = 112
    with pytest.raises(inference.UsageError, match="image_size=64 but model.image_size=112"):
        inference.vis_processor_config(both)
    del both["datasets"]
    assert inference.vis_processor_config(both) == {"name": "blip2_image_eval", "image_size": 112}


class _Model:
    def __init__(self, end_sym):
        self.end_sym = end_sym

    def stop_strings(self):
        return [self.end_sym.strip()] if self.end_sym.strip() else []


def test_caption_stop_strings():
    assert inference.caption_stop_strings(_Model("###")) == ["###"]
    assert inference.caption_stop_strings(_Model("\n")) == ["\n"]  # stage-1 captions end with a newline


def test_prompt_with_two_images_and_bad_penalty_are_one_line(tmp_path, capsys):
    from minigpt4 import caption

    (tmp_path / "imgs").mkdir()
    base = ["--cfg-path", "eval_configs/tiny_eval.yaml", "--images", str(tmp_path / "imgs"),
            "--out", str(tmp_path / "o.jsonl")]
    with pytest.raises(SystemExit) as exc:
        caption.main([*base, "--repetition-penalty", "0"])
    assert exc.value.code == 2 and "--repetition-penalty must be a positive number" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        caption.main([*base, "--prompt", "<ImageHere><ImageHere>"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("a caption prompt holds one image (or none: "
                                                                      "the instruction then follows the image)")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x9c\xff")
    with pytest.raises(SystemExit) as exc:
        caption.main([*base, "--list", str(photo)])
    assert exc.value.code == 2
    assert "--list" in (err := capsys.readouterr().err) and "not a UTF-8 text file" in err
    assert not (tmp_path / "o.jsonl").exists()


def test_a_folder_without_images_is_refused_and_shards_take_globs(tmp_path, capsys):
    from minigpt4 import caption_io

    (tmp_path / "empty").mkdir()
    (tmp_path / "shards").mkdir()
    for i in range(3):
        (tmp_path / "shards" / f"part-{i}.tar").write_bytes(b"")
    for folder, says in (("empty", "no image file in the folder (0 other file(s) left out)"),
                         ("shards", "for webdataset shards give them as --images")):
        with pytest.raises(SystemExit) as exc:
            caption.main(["--cfg-path", "eval_configs/tiny_eval.yaml", "--images", str(tmp_path / folder),
                          "--out", str(tmp_path / "o.jsonl")])
        assert exc.value.code == 2 and says in capsys.readouterr().err
    assert caption_io.shard_urls(str(tmp_path / "shards" / "*.tar")) == [
        str(tmp_path / "shards" / f"part-{i}.tar") for i in range(3)]
