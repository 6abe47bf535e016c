"""Captioning a labelled dataset: class folders, path,label lists, {label} prompts, keys, malformed input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from minigpt4.testing.golden import draw_scene, write_config
from minigpt4 import caption

NEW_TOKENS = "10"
CLASSES = {"n01_tabby_cat": [0, 3, 5], "dog": [1, 2, 7, 8]}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("labels")
    root = d / "train"
    for label, ids in CLASSES.items():
        (root / label).mkdir(parents=True)
        for i in ids:
            draw_scene(i).save(root / label / f"img{i:02d}.png")
    draw_scene(9).save(root / "loose.png")  # no class folder
    (root / "dog" / "broken.png").write_text("not a picture")
    write_config(d)
    return d


def argv(workdir, out, *extra):
    return ["--cfg-path", str(workdir / "fixture_eval.yaml"), "--out", str(out), "--max-new-tokens", NEW_TOKENS,
            "--no-progress", *extra]


def rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def conditioned(workdir):
    names = workdir / "names.json"
    names.write_text(json.dumps({"n01_tabby_cat": "tabby_cat", "dog": "dog"}))
    out = workdir / "cond.jsonl"
    assert caption.main(argv(workdir, out, "--images", str(workdir / "train"), "--labels", "dirs", "--batch-size", "3",
                             "--prompt", "Describe this {label} in detail.", "--label-names", str(names))) == 0
    return rows(out)


def test_class_folder_rows_are_keyed_by_relative_path_with_their_label(workdir, conditioned):
    keys = [r["key"] for r in conditioned]
    assert keys == sorted(keys) == ["dog/broken.png", "dog/img01.png", "dog/img02.png", "dog/img07.png",
                                    "dog/img08.png", "n01_tabby_cat/img00.png", "n01_tabby_cat/img03.png",
                                    "n01_tabby_cat/img05.png"]
    for r in conditioned:
        assert r["label"] == r["key"].split("/")[0]
        assert r["image"] == str(workdir / "train" / r["key"])
    assert "not a readable image" in conditioned[0]["error"] and "caption" not in conditioned[0]
    assert all(r["caption"] for r in conditioned[1:])


def test_label_field_is_filled_per_image_with_the_readable_name(workdir, conditioned):
    """A batch mixing classes gives each image the text of its own prompt run alone."""
    got = {r["key"]: r.get("caption") for r in conditioned}
    for label, name in (("n01_tabby_cat", "tabby cat"), ("dog", "dog")):
        out = workdir / f"plain-{label}.jsonl"
        assert caption.main(argv(workdir, out, "--images", str(workdir / "train" / label), "--batch-size", "1",
                                 "--prompt", f"Describe this {name} in detail.")) == 0
        for r in rows(out):
            assert got[f"{label}/{r['key']}"] == r.get("caption"), r["key"]
    unconditioned = workdir / "uncond.jsonl"
    assert caption.main(argv(workdir, unconditioned, "--images", str(workdir / "train"), "--labels", "dirs")) == 0
    differ = [r["key"] for r in rows(unconditioned) if "caption" in r and r["caption"] != got[r["key"]]]
    assert differ  # the class in the prompt changes what the model writes


def test_list_files_csv_and_jsonl(workdir, conditioned):
    root = workdir / "train"
    csv_file = workdir / "list.csv"
    csv_file.write_text("label,path,extra\n"
                        "dog,dog/img07.png,x\n"
                        f"n01_tabby_cat,{root / 'n01_tabby_cat' / 'img03.png'},y\n"  # absolute inside ROOT
                        "dog,./dog/../dog/img01.png,z\n")
    jsonl_file = workdir / "list.jsonl"
    jsonl_file.write_text(json.dumps({"path": "dog/img07.png", "label": "dog"}) + "\n"
                          + json.dumps({"path": "n01_tabby_cat/img03.png", "label": "n01_tabby_cat"}) + "\n\n"
                          + json.dumps({"path": "dog/img01.png", "label": "dog"}) + "\n")
    names = workdir / "names.csv"
    names.write_text("id,name\nn01_tabby_cat,tabby_cat\ndog,dog\n")
    want = {r["key"]: r for r in conditioned}
    for listing in (csv_file, jsonl_file):
        out = workdir / f"{listing.name}.out.jsonl"
        assert caption.main(argv(workdir, out, "--images", str(root), "--list", str(listing), "--batch-size", "2",
                                 "--prompt", "Describe this {label} in detail.", "--label-names", str(names))) == 0
        got = rows(out)
        assert [r["key"] for r in got] == ["dog/img07.png", "n01_tabby_cat/img03.png", "dog/img01.png"]
        assert got == [want[r["key"]] for r in got]


def test_label_names_formats(tmp_path):
    from minigpt4.image_lists import read_label_names, readable_names

    (tmp_path / "a.json").write_text(json.dumps({"0": ["n01440764", "tench"], "1": ["n01443537", "goldfish"]}))
    (tmp_path / "b.txt").write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n")
    for name in ("a.json", "b.txt"):
        assert read_label_names(tmp_path / name) == {"n01440764": "tench", "n01443537": "goldfish"}
    assert readable_names(["great_white_shark"], None) == {"great_white_shark": "great white shark"}
    with pytest.raises(ValueError, match=r"--label-names x.csv: no name for 1 of 2 label\(s\), e.g. 'b'"):
        readable_names(["a", "b"], {"a": "A"}, "x.csv")


def bad(workdir, capsys, *extra):
    with pytest.raises(SystemExit) as info:
        caption.main(argv(workdir, workdir / "bad.jsonl", *extra))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_malformed_input_is_one_line_naming_the_flag(workdir, capsys, tmp_path):
    root = str(workdir / "train")
    assert "--prompt uses {label} but the images have no labels" in bad(
        workdir, capsys, "--images", root, "--prompt", "Describe this {label}.")
    nolabel = tmp_path / "l.csv"
    nolabel.write_text("path,class\ndog/img01.png,dog\n")
    assert f"--list {nolabel}: no 'label' column (header: path,class)" in bad(
        workdir, capsys, "--images", root, "--list", str(nolabel))
    outside = tmp_path / "o.jsonl"
    outside.write_text(json.dumps({"path": "../elsewhere.png", "label": "dog"}) + "\n")
    assert f"--list {outside}:1: ../elsewhere.png is outside --images {root}" in bad(
        workdir, capsys, "--images", root, "--list", str(outside))
    absolute = tmp_path / "a.csv"
    absolute.write_text(f"path,label\n{tmp_path / 'x.png'},dog\n")
    assert "is outside --images" in bad(workdir, capsys, "--images", root, "--list", str(absolute))
    twice = tmp_path / "t.csv"
    twice.write_text("path,label\ndog/img01.png,dog\ndog/./img01.png,dog\n")
    assert f"--list {twice}:3: dog/img01.png is listed twice (first at line 2)" in bad(
        workdir, capsys, "--images", root, "--list", str(twice))
    names = tmp_path / "n.json"
    names.write_text(json.dumps({"dog": "dog"}))
    assert "--label-names" in bad(workdir, capsys, "--images", root, "--labels", "dirs", "--label-names", str(names),
                                  "--prompt", "A {label}.")
    assert "--label-names needs labels" in bad(workdir, capsys, "--images", root, "--label-names", str(names))
    assert "--images" in bad(workdir, capsys, "--images", str(tmp_path / "x-{0..1}.tar"), "--labels", "dirs")
    assert "no image in a class folder" in bad(workdir, capsys, "--images", str(workdir / "train" / "dog"),
                                               "--labels", "dirs")
