"""The paper's loop on the tiny world: the stage-1 model makes its own stage-2 set with
``minigpt4.curate`` (describe with the paper's prompt and its 80-token ``Continue`` rule -> fix -> filter
-> review -> export as a ``cc_sbu_align`` folder), from the same training images the ground-truth
stage-2 set uses; their ground-truth descriptions are never read.

The manual pass of the paper (a person reads every kept paragraph and edits or rejects it) is played
by the world's grammar: the reviewer removes sentences that are not sentences of the world's language
and rejects a paragraph with none left. Like a person, it reads only the text, never the image's labels.
"""
from __future__ import annotations

import json
from pathlib import Path

from minigpt4.tiny_world import text as T


def review_edits(work_dir: Path) -> tuple[Path, dict]:
    """Edits (``{"key", "text"}`` or ``{"key", "reject", "reason"}``) for the kept rows of ``filtered.jsonl``."""
    from minigpt4.curate.workdir import read_jsonl

    edits, counts = [], {"edited": 0, "rejected": 0}
    for row in read_jsonl(Path(work_dir) / "filtered.jsonl"):
        if row["verdict"] != "keep":
            continue
        parsed = T.parse_description(row["text"])
        good = [s for s in parsed.sentences if s not in parsed.bad]
        if not good:
            edits.append({"key": row["key"], "reject": True, "reason": "no sentence of the world's language"})
            counts["rejected"] += 1
        elif len(good) < len(parsed.sentences):
            edits.append({"key": row["key"], "text": " ".join(good)})
            counts["edited"] += 1
    path = Path(work_dir) / "review_edits.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in edits))
    return path, counts


def curate_stage2_set(images: Path, work_dir: Path, model, processor, *, fixer: str = "rules",
                      review: bool = True, batch_size: int = 50, max_new_tokens: int = 96) -> tuple[Path, dict]:
    """Run the curation from scratch with an already loaded stage-1 model; returns the exported
    ``cc_sbu_align`` folder and the summary (described, continued, fixed, changed, rejected by reason, kept)."""
    from minigpt4 import curate
    from minigpt4.curate.workdir import read_jsonl

    work_dir = Path(work_dir)
    export = work_dir / "cc_sbu_align"
    options = [f"describe.batch_size={batch_size}", f"describe.max_new_tokens={max_new_tokens}"]
    cfg = curate.load_config(None, options, images=images, work_dir=work_dir, fixer=fixer, export_out=export)
    curate.run(cfg, stages="describe,fix,filter", model=model, vis_processor=processor, force=True)
    review_counts = None
    if review:
        edits, review_counts = review_edits(work_dir)
        curate.run(cfg, stages="apply-review,export", review_edits=str(edits), force=True)
    else:
        (work_dir / "reviewed.jsonl").unlink(missing_ok=True)
        curate.run(cfg, stages="export", force=True)
    summary = json.loads((work_dir / "summary.json").read_text())
    described = {r["key"]: r.get("text") for r in read_jsonl(work_dir / "described.jsonl")}
    fixed = read_jsonl(work_dir / "fixed.jsonl")
    summary["fixer"] = fixer
    summary["changed_by_fixer"] = sum(r.get("text") is not None and r["text"] != described.get(r["key"]) for r in fixed)
    if review_counts is not None:
        summary["review"] = {"by": "the world's grammar (reads the text only)", **review_counts}
    return export, summary
