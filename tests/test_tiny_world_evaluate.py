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
    # every sentence grammatical, but no scene of the world is described like this (read from the text alone)
    for incoherent in ("There are two shapes. On the left is a large red circle. On the right is a small red circle. "
                       "The red circle is bigger than the red circle.",  # compares an object with itself
                       "There are two shapes. On the left is a large red circle. On the right is a small blue square. "
                       "The green circle is bigger than the blue square.",  # compares an object it never described
                       "There are two shapes. On the left is a large red circle.",  # stops early
                       "There is one shape. On the left is a large red circle."):  # wrong slot for the count
        out = judge_answer(incoherent, True, SCENE)
        assert out["reasons"] == ["not a description of any scene"] and not out["correct"], incoherent
    misread = ("There are two shapes. On the left is a large red circle. On the right is a large blue square. "
               "The red circle is bigger than the blue square.")  # a misread size: wrong, not malformed
    assert not judge_answer(misread, True, SCENE)["malformed"]
    other = "There is one shape. It is a small green triangle."  # coherent, not this image
    assert judge_answer(other, True, SCENE) == {"malformed": False, "reasons": [], "correct": False,
                                                "attributes": {"size": 0.0, "colour": 0.0, "shape": 0.0, "count": 0.0}}
    wrong = good.replace("red", "green")  # a coherent description of another scene: well formed, wrong
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
