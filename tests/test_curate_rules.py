"""The curation's pure parts: text clean-up, filter verdicts, config validation, review edits, image ids."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from minigpt4 import curate
from minigpt4.curate import text_rules
from minigpt4.curate.config import DEFAULTS, FAILURE_STRINGS, FIX_PROMPT
from minigpt4.curate.export import image_ids
from minigpt4.curate.filter import decide
from minigpt4.curate.pipeline import parse_stages
from minigpt4.curate.review import apply_edits, read_edits

GOOD = "A red square sits in the middle of the picture. The background is plain and evenly lit."


def test_fix_prompt_is_the_papers_verbatim():
    assert FIX_PROMPT == (
        "Fix the error in the given paragraph. Remove any repeating sentences, meaningless characters, not English "
        "sentences, and so on. Remove unnecessary repetition. Rewrite any incomplete sentences. Return directly the "
        "results without explanation. Return directly the input paragraph if it is already correct without "
        "explanation.")


def test_rules_clean_up():
    text = ("A red ball is on the table. A red ball is on the table!! ###Human: It has a \x00 stripe \u2603. "
            "I apologize for that. The ball is 3.5 cm wide. The ball is")
    assert text_rules.clean(text, FAILURE_STRINGS) == \
        "A red ball is on the table. It has a stripe. The ball is 3.5 cm wide."
    assert text_rules.clean("a dog runs", []) == "a dog runs."  # one unfinished sentence gets a full stop
    assert text_rules.repetition("A cat. A cat. A dog. a CAT!") == pytest.approx(0.5)
    assert text_rules.repetition("") == 0.0
    assert text_rules.contains_any("I\u2019m sorry I made a mistake here", FAILURE_STRINGS) == "I'm sorry I made a mistake"


def rule_cfg(**over):
    return OmegaConf.merge(OmegaConf.create(DEFAULTS["filter"]), over)


def described(text=GOOD):
    return {"key": "k", "text": text}


@pytest.mark.parametrize("reply, over, verdict, reason, text", [
    (None, {}, "keep", "", "fixed"),
    ("The paragraph is already correct.", {}, "keep", "", "original"),
    ("It is already correct, with no repetition.", {}, "reject", "already_correct", None),
    ("The paragraph is already correct.", {"already_correct": "reject"}, "reject", "already_correct", None),
    ("The paragraph is already correct.", {"already_correct": "keep_reply"}, "reject", "too_short", None),
    ("The last sentence is incomplete.", {}, "reject", "incomplete", None),
    ("The last sentence is incomplete.", {"reject_incomplete": False}, "reject", "too_short", None),
])
def test_reply_rules_of_the_public_script(reply, over, verdict, reason, text):
    fixed_text = GOOD if reply is None else (reply if "already" in reply or "incomplete" in reply else GOOD)
    fixed = {"key": "k", "text": fixed_text if reply is None else reply}
    if reply is not None:
        fixed["reply"] = reply
    out = decide(described(GOOD + " Original."), fixed, rule_cfg(**over))
    assert (out["verdict"], out["reason"]) == (verdict, reason)
    if text == "original":
        assert out["text"] == GOOD + " Original." and out["source"] == "original"
    elif text == "fixed":
        assert out["text"] == GOOD and out["source"] == "fixed"


def test_hard_rules():
    cfg = rule_cfg()
    assert decide({"key": "k", "error": "not a readable image"}, None, cfg)["reason"] == "describe_failed"
    assert decide(described(), {"key": "k", "fix_error": "HTTP 500 (after 3 attempts)"}, cfg)["detail"] == \
        "HTTP 500 (after 3 attempts)"
    sorry = decide(described(), {"key": "k", "text": "I'm sorry I made a mistake. " + GOOD}, cfg)
    assert (sorry["reason"], sorry["detail"]) == ("failure_string", "I'm sorry I made a mistake")
    assert decide(described(), {"key": "k", "text": "A cat."}, cfg)["reason"] == "too_short"
    assert decide(described(), {"key": "k", "text": "A cat."}, rule_cfg(min_length=3))["verdict"] == "keep"
    rep = "A cat sits on a mat. " * 4 + "It is grey."  # 3 of 5 sentences repeat
    assert decide(described(), {"key": "k", "text": rep}, cfg)["reason"] == "repetition"
    assert decide(described(), {"key": "k", "text": rep}, rule_cfg(max_repetition=0.6))["verdict"] == "keep"
    assert decide(described(), {"key": "k", "text": GOOD}, rule_cfg(reject_patterns=["evenly"]))["reason"] == "pattern"


def test_config_keys_types_and_sources(tmp_path):
    cfg = curate.load_config(None)
    assert cfg.fix.fixer == "rules" and cfg.describe.continue_max_tokens == 80 and cfg.filter.min_length == 50
    yaml = tmp_path / "c.yaml"
    yaml.write_text("curate:\n  num_images: 10\n  fix:\n    fixer: none\n")
    cfg = curate.load_config(yaml, ["curate.seed=7", "filter.min_length=20"], num_images=3, work_dir=tmp_path)
    assert (cfg.num_images, cfg.seed, cfg.filter.min_length, cfg.fix.fixer) == (3, 7, 20, "none")
    for options, message in [(["describe.batch_size=0"], "curate.describe.batch_size must be at least 1"),
                             (["fix.fixer=gpt"], "curate.fix.fixer must be one of rules, openai, hf, none"),
                             (["filter.min_lenght=3"], "did you mean 'filter.min_length'"),
                             (["fix.openai.timeout=soon"], "curate.fix.openai.timeout must be a number"),
                             (["describe.prompt=Describe it."], "must contain <ImageHere> exactly once"),
                             (["filter.reject_incomplete=maybe"], "must be true or false"),
                             (["fix.openai.timeout=-1"], "curate.fix.openai.timeout must be > 0, got -1"),
                             (["fix.openai.max_retries=-1"], "curate.fix.openai.max_retries must be >= 0, got -1"),
                             (["fix.openai.temperature=-3"], "curate.fix.openai.temperature must be >= 0, got -3"),
                             (["filter.max_repetition=-1"], "curate.filter.max_repetition must be >= 0, got -1"),
                             (["filter.max_repetition=1.5"], "curate.filter.max_repetition must be <= 1, got 1.5"),
                             (["filter.min_length=-5"], "curate.filter.min_length must be >= 0, got -5"),
                             (["export.jpeg_quality=0"], "curate.export.jpeg_quality must be >= 1, got 0"),
                             (["review.max_image_side=0"], "curate.review.max_image_side must be at least 1"),
                             (["fix.hf.device=gpu"], "curate.fix.hf.device: 'gpu' is not a device")]:
        with pytest.raises(curate.CurateError, match=message.replace(".", r"\.").replace("(", r"\(")):
            curate.load_config(None, options)
    with pytest.raises(curate.CurateError, match="expected a top-level 'curate:' section"):
        (tmp_path / "m.yaml").write_text("model: {}\n")
        curate.load_config(tmp_path / "m.yaml")


def test_config_files_that_cannot_be_read_are_one_line(tmp_path):
    (tmp_path / "syntax.yaml").write_text("curate:\n  seed: [1\n")
    (tmp_path / "binary.yaml").write_bytes(bytes(range(128, 256)))
    (tmp_path / "folder.yaml").mkdir()
    for name, message in [("syntax.yaml", r"not valid YAML at line 3, column 1: did not find expected"),
                          ("binary.yaml", r"not a text \(YAML\) file"), ("folder.yaml", "is a folder, not a YAML file"),
                          ("none.yaml", "no such file")]:
        with pytest.raises(curate.CurateError, match=rf"^--config {tmp_path / name}: {message}"):
            curate.load_config(tmp_path / name)


def test_stages_and_image_ids():
    for nothing in (",", "", " , "):
        with pytest.raises(curate.CurateError, match=r"^--stages '.*': names no stage; give all, or"):
            parse_stages(nothing)
    assert parse_stages("all") == ["describe", "fix", "filter", "review", "export"]
    assert parse_stages("all", has_edits=True)[-2:] == ["apply-review", "export"]
    assert parse_stages("export,fix") == ["fix", "export"]  # always in pipeline order
    assert image_ids(["a/b.jpg", "a_b.png", "c", "x y.tar.jpg", "???"]) == \
        {"a/b.jpg": "a_b", "a_b.png": "a_b_2", "c": "c", "x y.tar.jpg": "x_y_tar", "???": "image"}


def test_apply_edits():
    verdicts = [{"key": "a", "verdict": "keep", "reason": "", "detail": "", "text": "A."},
                {"key": "b", "verdict": "reject", "reason": "too_short", "detail": "", "text": "B."},
                {"key": "c", "verdict": "keep", "reason": "", "detail": "", "text": "C."}]
    rows, counts = apply_edits(verdicts, {}, [{"key": "a", "text": " New A. "}, {"key": "b", "reject": False},
                                              {"key": "c", "reject": True, "reason": "wrong picture"}])
    rows = {r["key"]: r for r in rows}
    assert rows["a"]["text"] == "New A." and rows["a"]["source"] == "review"
    assert rows["b"]["verdict"] == "keep" and rows["b"]["text"] == "B."
    assert (rows["c"]["verdict"], rows["c"]["reason"], rows["c"]["detail"]) == ("reject", "review", "wrong picture")
    assert counts == {"edited": 1, "rejected_by_review": 1, "restored_by_review": 1}


def test_review_edits_file_is_checked_line_by_line(tmp_path):
    edits = tmp_path / "review_edits.jsonl"
    edits.write_text('{"key": "a", "text": "First."}\n\n{"key": "b", "reject": true}\n{"key": "a", "reject": true}\n')
    with pytest.raises(curate.CurateError, match=rf"^{edits}:4 \(key 'a'\): the key is edited again \(first at "
                                                 r"line 1\)"):
        read_edits(edits, {"a", "b"})
    edits.write_text('{"key": "a", "text": "First."}\n{"key": "b", "reject": true}')  # written by hand: no newline
    assert read_edits(edits, {"a", "b"}) == [{"key": "a", "text": "First."}, {"key": "b", "reject": True}]
    with pytest.raises(curate.CurateError, match=rf"^{edits}:2 \(key 'b'\): no such key in the filtered rows"):
        read_edits(edits, {"a"})
    edits.write_bytes(b"\xff\xd8\xff\xe0 a JPEG")
    with pytest.raises(curate.CurateError, match=r"^--review-edits / curate.review.edits .*: not a UTF-8 text file"):
        read_edits(edits, {"a"})
    with pytest.raises(curate.CurateError, match=r"^--review-edits / curate.review.edits .*: is a folder, not a file"):
        read_edits(tmp_path, {"a"})
