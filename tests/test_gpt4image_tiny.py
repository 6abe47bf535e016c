"""The tiny demonstration's own parts: the classification split, the summary, the missing-world message, and
(slow) the whole command on a prebuilt tiny world."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from minigpt4.gpt4image import tiny
from minigpt4.gpt4image.tiny_split import label_of, write_split
from minigpt4.tiny_world.scenes import Scene, WorldSpec


def test_split_is_balanced_held_out_and_labelled_by_the_leftmost_shape(tmp_path):
    sizes = write_split(tmp_path, WorldSpec(), train_per_class=4, test_per_class=3, seed=5)
    assert sizes == {"train": 12, "test": 9}
    rows = [json.loads(x) for x in (tmp_path / "scenes.jsonl").read_text().splitlines()]
    for split, n in (("train", 4), ("test", 3)):
        for shape in ("circle", "square", "triangle"):
            assert len(list((tmp_path / split / shape).glob("*.png"))) == n
    signatures = {split: {json.dumps(r["scene"]) for r in rows if r["split"] == split} for split in ("train", "test")}
    assert not signatures["train"] & signatures["test"]
    for r in rows:
        scene = Scene.from_json(r["scene"])
        assert r["label"] == label_of(scene) == scene.objects[0].shape and r["key"].startswith(r["label"] + "/")
        assert min(o.col for o in scene.objects) == scene.objects[0].col
        assert Image.open(tmp_path / r["split"] / r["key"]).size == (112, 112)
        assert r["label"] in r["truth"]  # the description carries the label ... and more
        assert len(r["truth"].split()) > 6


def test_summary_mean_and_std():
    runs = [{"backbone": "cnn", "variant": "baseline", "seed": s, "top1": v} for s, v in enumerate((0.5, 0.7, 0.6))]
    s = tiny.summarise(runs)["cnn/baseline"]
    assert s["mean"] == pytest.approx(0.6) and s["std"] == pytest.approx(0.1) and s["n"] == 3


def test_missing_tiny_world_says_how_to_build_it(tmp_path, capsys):
    code = tiny.main(["--out", str(tmp_path / "out"), "--tiny-world", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "--tiny-world" in err[0] and "python -m minigpt4.tiny_world --out" in err[0]


WORLD = Path(os.environ.get("MINIGPT4_TINY_WORLD", "tiny_world"))


@pytest.mark.slow
@pytest.mark.skipif(not (WORLD / "runs" / "stage2").is_dir(), reason="needs a built tiny world (MINIGPT4_TINY_WORLD)")
def test_whole_demonstration_on_a_small_budget(tmp_path):
    report = tiny.run(tmp_path, WORLD.resolve(), seeds=(0,), jobs=1, train_per_class=6, test_per_class=4,
                      variants=("baseline", "aligned"), backbones=("cnn",))
    assert [(r["variant"], r["seed"]) for r in report["runs"]] == [("baseline", 0), ("aligned", 0)]
    assert all(0 <= r["top1"] <= 1 for r in report["runs"])
    rows = [json.loads(x) for x in (tmp_path / "descriptions" / "plain.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in rows) == sorted(p.relative_to(tmp_path / "data" / "train").as_posix()
                                                    for p in (tmp_path / "data" / "train").rglob("*.png"))
    assert (tmp_path / "report.html").read_text().count("<img") >= 1
    quality = report["descriptions"]["plain"]
    assert quality["images"] == 18 and 0 <= quality["exact"] <= quality["leftmost_shape_right"] <= 18


def test_an_out_that_is_a_file_is_one_line(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for out, why in ((notes, "is a file, not a folder"), (notes / "run", f"cannot be created, {notes} is a file")):
        code = tiny.main(["--out", str(out), "--tiny-world", str(tmp_path / "nowhere"), "--build-world"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err == [f"python -m minigpt4.gpt4image.tiny: error: --out {out}: {why}"]
    assert notes.read_text() == "mine" and not (tmp_path / "nowhere").exists()


def test_flags_are_checked_one_by_one_and_variants_run_once(monkeypatch, capsys):
    for argv, says in ((["--seeds", "0"], "--seeds must be at least 1, got 0"),
                       (["--jobs", "-1"], "--jobs must be at least 1, got -1"),
                       (["--variants", "baseline,foo"], "--variants 'baseline,foo': unknown 'foo'")):
        with pytest.raises(SystemExit) as info:
            tiny.main(argv)
        assert info.value.code == 2 and says in capsys.readouterr().err.strip().splitlines()[-1]
    seen = []
    monkeypatch.setattr(tiny, "summarize", lambda args, world, variants: seen.append(variants) or 0)
    assert tiny.main(["--variants", "aligned,aligned, baseline"]) == 0
    assert seen == [("aligned", "baseline")]  # one run folder per variant and seed


def test_a_tiny_world_that_is_a_file_is_one_line(tmp_path, capsys):
    a_file = tmp_path / "world.txt"
    a_file.write_text("x")
    assert tiny.main(["--tiny-world", str(a_file), "--out", str(tmp_path / "out")]) == 2
    assert f"--tiny-world {a_file}: is a file, not a folder" in capsys.readouterr().err
    assert a_file.read_text() == "x" and not (tmp_path / "out").exists()
