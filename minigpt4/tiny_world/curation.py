"""The paper's loop on the tiny world: the stage-1 model makes its own stage-2 set with
``minigpt4.curate`` (describe with the paper's prompt and its 80-token ``Continue`` rule -> fix -> filter
-> review -> export as a ``cc_sbu_align`` folder), from the same training images the ground-truth
stage-2 set uses; their ground-truth descriptions are never read.

The manual pass of the paper (a person reads every kept paragraph, removes what is redundant or broken,
rejects what cannot be saved) is played by the world's grammar: the reviewer keeps a paragraph's count and
its sentence for each object, closes them with the comparison they imply, and rejects a paragraph that
describes no possible scene. Like a person without the image's labels, it reads only the text.
"""
from __future__ import annotations

import json
from pathlib import Path

from minigpt4.tiny_world import text as T


def reviewed(text: str) -> tuple[str | None, str | None]:
    """(the paragraph as the reviewer leaves it, or None; the reason for a rejection). Sentences outside the
    world's language are dropped; what is left must open with the count and one sentence per object in slot
    order, naming different objects (no two objects of this world share colour and shape); the paragraph is
    then cut there and closed with the comparison those sentences imply (a broken or contradicting closing
    sentence is rewritten, as a person fixing it would)."""
    parsed = T.parse_description(text)
    sentences = [s for s in parsed.sentences if s not in parsed.bad]
    if not sentences:
        return None, "not a description of any scene"
    count = T.parse_description(sentences[0]).count
    if count is None:
        return None, "not a description of any scene"
    scene = T.scene_described(T.parse_description(" ".join(sentences[: 1 + count])))
    if scene is None:
        return None, "not a description of any scene"
    if len({o.name for o in scene.objects}) < len(scene.objects):
        return None, "describes the same object twice"
    return T.description(scene), None


def review_edits(work_dir: Path) -> tuple[Path, dict]:
    """Edits (``{"key", "text"}`` or ``{"key", "reject", "reason"}``) for the kept rows of ``filtered.jsonl``,
    made by :func:`reviewed`."""
    from minigpt4.curate.workdir import read_jsonl

    edits, counts = [], {"edited": 0, "rejected": 0, "rejected_by_reason": {}}
    for row in read_jsonl(Path(work_dir) / "filtered.jsonl"):
        if row["verdict"] != "keep":
            continue
        kept, reason = reviewed(row["text"])
        if kept is None:
            edits.append({"key": row["key"], "reject": True, "reason": reason})
            counts["rejected"] += 1
            counts["rejected_by_reason"][reason] = counts["rejected_by_reason"].get(reason, 0) + 1
        elif kept != row["text"]:
            edits.append({"key": row["key"], "text": kept})
            counts["edited"] += 1
    path = Path(work_dir) / "review_edits.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in edits))
    return path, counts


# The paper rejects texts under 50 characters (English paragraphs); the world's shortest full description,
# "There is one shape. It is a small red circle.", has 45, so the tiny world's limit is lower.
MIN_LENGTH = 30


def curate_stage2_set(images: Path, work_dir: Path, model, processor, *, fixer: str = "rules",
                      review: bool = True, num_images: int | None = None, batch_size: int = 50,
                      max_new_tokens: int = 96) -> tuple[Path, dict]:
    """Run the curation from scratch with an already loaded stage-1 model; returns the exported
    ``cc_sbu_align`` folder and the summary (described, continued, fixed, changed, rejected by reason, kept)."""
    from minigpt4 import curate
    from minigpt4.curate.workdir import read_jsonl

    work_dir = Path(work_dir)
    export = work_dir / "cc_sbu_align"
    options = [f"describe.batch_size={batch_size}", f"describe.max_new_tokens={max_new_tokens}",
               f"filter.min_length={MIN_LENGTH}", f"num_images={'null' if num_images is None else num_images}"]
    cfg = curate.load_config(None, options, images=images, work_dir=work_dir, fixer=fixer, export_out=export)
    (work_dir / "reviewed.jsonl").unlink(missing_ok=True)  # made again below, from the new verdicts
    curate.run(cfg, stages="describe,fix,filter", model=model, vis_processor=processor, force=True)
    review_counts = None
    if review:
        edits, review_counts = review_edits(work_dir)
        curate.run(cfg, stages="apply-review,export", review_edits=str(edits), force=True)
    else:
        curate.run(cfg, stages="export", force=True)
    summary = json.loads((work_dir / "summary.json").read_text())
    described = {r["key"]: r.get("text") for r in read_jsonl(work_dir / "described.jsonl")}
    fixed = read_jsonl(work_dir / "fixed.jsonl")
    summary["fixer"] = fixer
    summary["changed_by_fixer"] = sum(r.get("text") is not None and r["text"] != described.get(r["key"]) for r in fixed)
    if review_counts is not None:
        summary["review"] = {"by": "the world's grammar (reads the text only)", **review_counts}
    return export, summary
