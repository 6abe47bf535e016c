"""Captioning hostile inputs: a file name that is not UTF-8, a single image as --images, an --out that is a
folder or cannot be written."""
from __future__ import annotations

import json
import os

import pytest

from inference_config import draw_scene, write_config
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
