"""The tiny world's curation review, report page and command line (no model, no training)."""
from __future__ import annotations

import json

from minigpt4.tiny_world import text as T
from minigpt4.tiny_world.__main__ import PRESET_NAMES, parse_args
from minigpt4.tiny_world.curation import review_edits
from minigpt4.tiny_world.evaluate import caption_attributes, judge_answer, summarize
from minigpt4.tiny_world.page import write_page
from minigpt4.tiny_world.scenes import Scene

SCENE = Scene.from_json([{"colour": "red", "shape": "circle", "size": "large", "col": 1, "row": 3},
                         {"colour": "blue", "shape": "square", "size": "small", "col": 5, "row": 2}])


def test_review_keeps_the_described_scene_closes_it_and_rejects_the_rest(tmp_path):
    good = T.description(SCENE)
    rows = [{"key": "a", "verdict": "keep", "text": good},
            {"key": "b", "verdict": "keep", "text": good + " There is one shape. It is a large red circle."},
            {"key": "c", "verdict": "keep", "text": "There are two shapes. The There is bigger than the red triangle."},
            {"key": "d", "verdict": "keep",
             "text": "There is one shape. It is a tiny red circle. It is a large red circle."},
            {"key": "e", "verdict": "reject", "reason": "too_short", "text": "square."},
            {"key": "f", "verdict": "keep",  # a closing sentence that contradicts the sizes stated is rewritten
             "text": "There are two shapes. On the left is a small red circle. On the right is a small blue "
                     "square. The blue square is bigger than the blue square."},
            {"key": "g", "verdict": "keep",  # no two objects of the world share colour and shape
             "text": "There are two shapes. On the left is a small red circle. On the right is a large red "
                     "circle. The red circle is smaller than the red circle."}]
    (tmp_path / "filtered.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path, counts = review_edits(tmp_path)
    edits = [json.loads(line) for line in path.read_text().splitlines()]
    assert counts == {"edited": 3, "rejected": 2, "rejected_by_reason": {"not a description of any scene": 1,
                                                                        "describes the same object twice": 1}}
    assert edits == [{"key": "b", "text": good},
                     {"key": "c", "reject": True, "reason": "not a description of any scene"},
                     {"key": "d", "text": "There is one shape. It is a large red circle."},
                     {"key": "f", "text": "There are two shapes. On the left is a small red circle. On the right "
                                          "is a small blue square. The two shapes are the same size."},
                     {"key": "g", "reject": True, "reason": "describes the same object twice"}]


def _result(answer: str, caption: str) -> dict:
    sample = {"id": 0, "image": "test/0.jpg", "truth_caption": T.caption(SCENE),
              "truth_description": T.description(SCENE),
              "caption": caption, "caption_correct": T.caption_correct(caption, SCENE),
              "caption_attributes": caption_attributes(caption, SCENE), "instruction": T.INSTRUCTIONS[0],
              "answer": answer, "terminated": True, **judge_answer(answer, True, SCENE)}
    return summarize([sample] * 3)


def test_page_defines_the_metrics_and_shows_curves_and_curation(tmp_path):
    from PIL import Image

    (tmp_path / "test").mkdir()
    Image.new("RGB", (112, 112)).save(tmp_path / "test" / "0.jpg")
    Image.new("RGB", (20, 20)).save(tmp_path / "curves.png")
    results = {"stage1": _result("There square left is square.", T.caption(SCENE)),
               "stage2": _result(T.description(SCENE), "")}
    curation = {"described": 10, "continued": 10, "fixed": 10, "rejected": 4, "kept": 6, "fixer": "rules",
                "rejected_by_reason": {"too_short": 3, "review": 1}}
    page = write_page(tmp_path / "p.html", results, tmp_path, curves={"stage1": tmp_path / "curves.png",
                                                                     "stage2": tmp_path / "missing.png"},
                      curation=curation, max_images=2).read_text()
    for words in ("attribute accuracy (caption)", "malformed rate (conversation)", "description accuracy",
                  "0 by design", "The first 2 of the 3 held-out images", "too_short 3", "6 were kept",
                  "stage 1 (captions): "):
        assert words in page
    assert page.count("data:image/png;base64,") == 1  # the missing curve is left out, not a broken image
    assert page.count("data:image/jpeg;base64,") == 2


def test_command_line_presets_and_defaults():
    from minigpt4.tiny_world.presets import PRESETS

    assert set(PRESET_NAMES) == set(PRESETS)
    args = parse_args([])
    assert (args.out, args.preset, args.nproc) == ("tiny_world", "full", 2)


def test_bad_command_lines_are_one_line(tmp_path, capsys):
    from minigpt4.tiny_world.__main__ import main

    a_file = tmp_path / "world"
    a_file.write_text("not a folder")
    for argv, says in ((["--out", str(a_file)], f"--out {a_file}: is a file, not a folder"),
                       (["--out", str(a_file / "sub")], "cannot be created"),
                       (["--out", str(tmp_path / "w"), "--nproc", "0"], "--nproc must be at least 1")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "w").exists()
