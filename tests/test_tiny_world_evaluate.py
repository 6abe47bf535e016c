"""The tiny world's judgement of generated answers (pure functions)."""
from __future__ import annotations

from minigpt4.tiny_world import text as T
from minigpt4.tiny_world.evaluate import caption_attributes, judge_answer, summarize
from minigpt4.tiny_world.scenes import Scene

SCENE = Scene.from_json([{"colour": "red", "shape": "circle", "size": "large", "col": 1, "row": 3},
                         {"colour": "blue", "shape": "square", "size": "small", "col": 5, "row": 2}])


def test_malformed_reasons():
    good = T.description(SCENE)
    assert judge_answer(good, True, SCENE) == {"malformed": False, "reasons": [], "correct": True,
                                               "attributes": {"size": 1.0, "colour": 1.0, "shape": 1.0, "count": 1.0}}
    assert judge_answer(good, False, SCENE)["reasons"] == ["no end_sym"]
    assert judge_answer("", True, SCENE)["reasons"] == ["empty"]
    repeated = "There are two shapes. There are two shapes. On the left is a large red circle."
    assert judge_answer(repeated, True, SCENE)["reasons"] == ["repeats a sentence"]
    fragment = "There are two shapes. On the left is a large red circle. The There is bigger than the blue square."
    out = judge_answer(fragment, True, SCENE)
    assert out["reasons"] == ["sentence outside the grammar"] and not out["correct"]
    wrong = good.replace("large red", "large green")
    out = judge_answer(wrong, True, SCENE)
    assert not out["malformed"] and not out["correct"] and out["attributes"]["colour"] == 0.5


def test_caption_attributes_and_summary():
    assert caption_attributes("a red circle and a blue square", SCENE) == {"count": 1.0, "colour": 1.0, "shape": 1.0}
    assert caption_attributes("a red circle and a blue circle", SCENE) == {"count": 1.0, "colour": 1.0, "shape": 0.5}
    assert caption_attributes("red red red", SCENE) == {"count": 0.0, "colour": 0.0, "shape": 0.0}
    sample = {"caption_correct": True, "caption_attributes": caption_attributes("a red circle and a blue square", SCENE),
              **judge_answer(T.description(SCENE), True, SCENE)}
    bad = {"caption_correct": False, "caption_attributes": caption_attributes("", SCENE),
           **judge_answer("square", False, SCENE)}
    s = summarize([sample, bad])
    assert (s["attribute_accuracy"], s["malformed_rate"], s["description_accuracy"]) == (0.5, 0.5, 0.5)
    assert s["malformed_reasons"]["no end_sym"] == 1


def test_report_page_defines_the_metrics_counts_the_images_and_links_the_curves(tmp_path):
    from PIL import Image

    from minigpt4.tiny_world.evaluate import judge_answer, write_html

    Image.new("RGB", (8, 8), "white").save(tmp_path / "0.jpg")
    sample = {"id": 0, "image": "0.jpg", "truth_caption": T.caption(SCENE), "truth_description": T.description(SCENE),
              "caption": "a red circle", "caption_correct": False, "instruction": "Describe it.",
              "answer": T.description(SCENE), **judge_answer(T.description(SCENE), True, SCENE)}
    samples = [{**sample, "caption_attributes": caption_attributes(sample["caption"], SCENE)}] * 3
    results = {"stage1": summarize(samples), "stage2": summarize(samples)}
    page = write_html(tmp_path / "report.html", results, tmp_path, max_images=2,
                      curves={"stage1": "runs/stage1/tiny/curves.png"}).read_text()
    assert "The first 2 of the 3 held-out images" in page
    for term in ("<dt>attribute accuracy</dt>", "<dt>malformed rate</dt>", "<dt>description accuracy</dt>",
                 "0 here by design"):
        assert term in page
    assert "href='runs/stage1/tiny/curves.png'" in page and page.count("<img ") == 2
