"""Captioning hostile inputs: a file name that is not UTF-8, a single image as --images, an --out that is a
folder or cannot be written."""
from __future__ import annotations

import json
import os

import pytest

from minigpt4.testing.golden import draw_scene, write_config
from minigpt4 import caption
from minigpt4.sharded_jsonl import JsonlOutput

NOT_UTF8 = b"caf\xe9.jpg"  # Latin-1 "café.jpg": a name Linux allows and UTF-8 cannot decode


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("caption_faults")
    (d / "images").mkdir()
    draw_scene(1).save(os.path.join(os.fsencode(d / "images"), NOT_UTF8), format="JPEG")
    draw_scene(2).save(d / "images" / "plain.png")
    write_config(d)
    return d


def _argv(workdir, images, out, *extra):
    return ["--cfg-path", str(workdir / "fixture_eval.yaml"), "--images", str(images), "--out", str(out),
            "--max-new-tokens", "4", "--no-progress", *extra]


def _rows(path):
    text = path.read_bytes().decode("utf-8")  # the output is valid UTF-8 whatever the file names
    return [json.loads(line) for line in text.splitlines()]


def test_a_file_name_that_is_not_utf8_is_captioned_and_round_trips(workdir):
    out = workdir / "names.jsonl"
    assert caption.main(_argv(workdir, workdir / "images", out)) == 0
    rows = {os.fsencode(r["key"]): r for r in _rows(out)}
    assert set(rows) == {NOT_UTF8, b"plain.png"} and all("caption" in r for r in rows.values())
    assert os.path.exists(os.fsencode(rows[NOT_UTF8]["image"]))
    assert caption.main(_argv(workdir, workdir / "images", out)) == 0  # a rerun finds both done
    assert len(_rows(out)) == 2


def test_jsonl_output_keeps_undecodable_names(tmp_path):
    key = os.fsdecode(NOT_UTF8)
    output = JsonlOutput(tmp_path / "o.jsonl")
    output.write([{"key": key, "caption": "café"}])
    output.close()
    assert b'"caf\\udce9.jpg"' in (tmp_path / "o.jsonl").read_bytes()
    assert key in JsonlOutput(tmp_path / "o.jsonl").done


def test_a_single_image_file_is_accepted(workdir, tmp_path):
    out = tmp_path / "one.jsonl"
    assert caption.main(_argv(workdir, workdir / "images" / "plain.png", out)) == 0
    rows = _rows(out)
    assert [r["key"] for r in rows] == ["plain.png"] and "caption" in rows[0]


@pytest.mark.parametrize("bad_out,message", [("folder", "is a folder; give the path of a .jsonl file"),
                                             ("under_a_file", "cannot write there")])
def test_output_path_problems_are_one_line_errors(workdir, tmp_path, capsys, bad_out, message):
    (tmp_path / "a_file").write_text("x")
    out = tmp_path if bad_out == "folder" else tmp_path / "a_file" / "captions.jsonl"
    with pytest.raises(SystemExit) as info:
        caption.main(_argv(workdir, workdir / "images", out))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"minigpt4.caption: error: --out {out}: {message}"), err[-1]
    assert not any("Traceback" in line for line in err)


def test_every_entry_left_out_of_a_folder_has_a_reason(tmp_path, monkeypatch, caplog):
    from minigpt4 import caption_io
    from minigpt4.walk import walk_files

    root = tmp_path / "images"
    (root / "locked").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    draw_scene(3).save(tmp_path / "elsewhere" / "linked.jpg")
    draw_scene(4).save(root / "real.jpg")
    (root / "locked" / "hidden_by_permissions.jpg").write_bytes(b"x")
    os.symlink(tmp_path / "elsewhere", root / "more")       # a linked folder: followed
    os.symlink(root / "real.jpg", root / "alias.jpg")        # a linked file: read
    os.symlink(root / "nowhere.jpg", root / "dangling.jpg")
    os.symlink(root / "self.jpg", root / "self.jpg")         # a link to itself
    os.symlink(tmp_path, root / "parent")                    # a loop through a parent
    os.mkfifo(root / "pipe.jpg")                             # reading it would block forever
    os.mkfifo(root / ".hidden_pipe")                         # hidden: ignored, as hidden files are
    real_scandir = os.scandir

    def scandir(path):  # this process is root, for whom permissions do not apply: refuse one folder here
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    files, skipped = walk_files(root)
    assert [f.relative_to(root).as_posix() for f in files] == ["alias.jpg", "more/linked.jpg", "real.jpg"]
    assert {p.name: reason for p, reason in skipped} == {
        "dangling.jpg": "dangling link (its target does not exist)", "self.jpg": "link loop",
        "parent": "link to a folder that holds the listed one (a loop)",
        "pipe.jpg": "not a regular file (FIFO, socket or device)",
        "locked": "cannot list this folder (Permission denied)"}
    items, _ = caption_io.folder_items(root)
    assert [item.key for item in items] == ["alias.jpg", "more/linked.jpg", "real.jpg"]
    assert "left out 1 entry: link loop" in caplog.text and "pipe.jpg" in caplog.text


def test_shards_cut_between_members_compressed_or_with_a_member_twice(workdir, tmp_path, capsys):
    import gzip
    import io
    import tarfile

    import webdataset as wds

    image = (workdir / "images" / "plain.png").read_bytes()
    for prefix in "ab":
        with wds.TarWriter(str(tmp_path / f"{prefix}.tar")) as sink:
            for i in range(4):
                sink.write({"__key__": f"{prefix}{i}", "png": image})
    (tmp_path / "00001.tar.gz").write_bytes(gzip.compress((tmp_path / "a.tar").read_bytes()))
    with tarfile.open(tmp_path / "b.tar") as tar:
        cut = tar.getmembers()[2].offset  # exactly where sample b2 starts: b2 and b3 are lost
    (tmp_path / "00002.tar").write_bytes((tmp_path / "b.tar").read_bytes()[:cut])
    with tarfile.open(tmp_path / "00003.tar", "w") as tar:
        for _ in range(2):
            info = tarfile.TarInfo("d.png")
            info.size = len(image)
            tar.addfile(info, io.BytesIO(image))
    out = tmp_path / "shards.jsonl"
    assert caption.main(_argv(workdir, tmp_path / "{00001.tar.gz,00002.tar,00003.tar}", out)) == 0
    rows = {r["key"]: r for r in _rows(out)}
    assert sorted(rows) == ["a0", "a1", "a2", "a3", "b0", "b1", "d"]
    assert all("caption" in rows[k] for k in ("a0", "a3", "b1"))
    assert rows["d"]["error"] == "the sample holds more than one png member"
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.endswith("unreadable shard data 1")  # the cut shard, reported, not silently short


def test_images_over_max_image_pixels_become_error_rows_and_16_bit_images_are_read(workdir, tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "odd"
    folder.mkdir()
    Image.new("RGB", (64, 64), "red").save(folder / "big.png")
    gray16 = np.full((32, 32), 32768, dtype=np.uint16)  # mid-grey in 16 bits (Pillow alone clips it to white)
    Image.fromarray(gray16).save(folder / "deep.png")
    out = tmp_path / "out.jsonl"
    assert caption.main(_argv(workdir, folder, out, "--max-image-pixels", "2000")) == 0
    rows = {r["key"]: r for r in _rows(out)}
    assert "caption" not in rows["big.png"] and "4,096 pixels" in rows["big.png"]["error"]
    assert "caption" in rows["deep.png"]
    from minigpt4.conversation.conversation import load_image

    assert load_image(folder / "deep.png").getpixel((0, 0)) == (128, 128, 128)  # 32768 / 257, not 255


def test_retry_errors_captions_repaired_images_again_in_place(workdir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        draw_scene(i).save(images / f"{i}.png")
    (images / "1.png").write_bytes(b"not yet an image")
    out = tmp_path / "captions.jsonl"
    assert caption.main(_argv(workdir, images, out)) == 0
    first = _rows(out)
    assert [("error" in r) for r in first] == [False, True, False]
    draw_scene(1).save(images / "1.png")  # repaired
    assert caption.main(_argv(workdir, images, out)) == 0
    assert _rows(out) == first  # a plain rerun keeps the error row
    assert caption.main(_argv(workdir, images, out, "--retry-errors")) == 0
    again = _rows(out)
    assert [r["key"] for r in again] == ["0.png", "1.png", "2.png"]  # in the listing's order, one row each
    assert again[0] == first[0] and again[2] == first[2] and "caption" in again[1] and "error" not in again[1]
    assert not list(tmp_path.glob("captions.jsonl.*ing"))


def test_retry_errors_reaches_rows_left_in_part_files(tmp_path):
    from minigpt4.sharded_jsonl import ShardedJsonl, drop_rows

    out = tmp_path / "c.jsonl"
    part = ShardedJsonl(out, rank=1, world_size=2)  # what a killed two-rank run leaves
    part.write([{"key": "a", "caption": "x"}, {"key": "b", "error": "unreadable"}])
    part.close()
    out.write_text(json.dumps({"key": "c", "error": "unreadable"}) + "\n")
    assert drop_rows(out, lambda row: "error" in row) == 2
    assert ShardedJsonl(out).done == {"a"}
