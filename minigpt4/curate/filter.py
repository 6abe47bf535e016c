"""The filter stage: a verdict (keep / reject, with its reason) for every image, in ``filtered.jsonl``.

Rules, in this order (the first that matches decides):

``describe_failed``   the image could not be read or described;
``fix_failed``        the fixer gave up on the row (its reason is in ``detail``);
``failure_string``    the text contains one of ``filter.failure_strings`` (the paper's hard-coded
                      rejections, e.g. "I'm sorry I made a mistake", "I apologize for that");
``already_correct``   a language-model fixer replied that the paragraph is "already correct":
                      with ``already_correct: keep_original`` (default, as the public script) the original
                      paragraph is kept, unless the reply also mentions "repetition" (then rejected);
                      ``reject`` rejects it; ``keep_reply`` keeps the reply as the text;
``incomplete``        a language-model fixer's reply says "incomplete" (``reject_incomplete``);
``too_short``         the final text is shorter than ``min_length`` characters;
``repetition``        more than ``max_repetition`` of its sentences repeat an earlier one;
``pattern``           one of ``reject_patterns`` (regular expressions) matches.

Rows carry a fingerprint of what they were decided from; when the description or the fix of a key
changes, its verdict is decided again.
"""
from __future__ import annotations

import logging
import re

from minigpt4.sharded_jsonl import JsonlOutput
from minigpt4.curate import text_rules
from minigpt4.curate.config import CurateError
from minigpt4.curate.workdir import WorkDir, by_key, digest, prune

log = logging.getLogger(__name__)

REASONS = ("describe_failed", "fix_failed", "failure_string", "already_correct", "incomplete", "too_short",
           "repetition", "pattern", "review")


def _reject(reason: str, detail: str = "", text: str | None = None) -> dict:
    return {"verdict": "reject", "reason": reason, "detail": detail, "text": text}


def decide(described: dict, fixed: dict | None, cfg) -> dict:
    """The verdict for one image: ``{"verdict", "reason", "detail", "text", "source"?}``."""
    if "text" not in described:
        return _reject("describe_failed", described.get("error", ""))
    if fixed is None or "fix_error" in fixed:
        return _reject("fix_failed", (fixed or {}).get("fix_error", "no fix row"))
    text, source, reply = fixed["text"], "fixed", fixed.get("reply")
    hit = text_rules.contains_any(text, cfg.failure_strings)
    if hit:
        return _reject("failure_string", hit, text)
    if reply is not None and "already correct" in reply.lower():
        if cfg.already_correct == "reject":
            return _reject("already_correct", "the fixer called it already correct", text)
        if cfg.already_correct == "keep_original":
            if "repetition" in reply.lower():
                return _reject("already_correct", "already correct but mentions repetition", text)
            text, source = described["text"], "original"
    elif reply is not None and cfg.reject_incomplete and "incomplete" in reply.lower():
        return _reject("incomplete", "the fixer's reply says incomplete", text)
    if len(text.strip()) < cfg.min_length:
        return _reject("too_short", f"{len(text.strip())} < {cfg.min_length} characters", text)
    share = text_rules.repetition(text)
    if share > cfg.max_repetition:
        return _reject("repetition", f"{share:.2f} of the sentences repeat", text)
    for pattern in cfg.reject_patterns:
        if re.search(pattern, text):
            return _reject("pattern", pattern, text)
    return {"verdict": "keep", "reason": "", "detail": "", "text": text, "source": source}


def run_filter(cfg, work: WorkDir) -> dict:
    for pattern in cfg.filter.reject_patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise CurateError(f"curate.filter.reject_patterns: {pattern!r} is not a regular expression ({exc})") \
                from None
    described = work.rows("describe", required_by="filter")
    fixed = by_key(work.rows("fix", required_by="filter"))
    missing = [r["key"] for r in described if "text" in r and r["key"] not in fixed]
    if missing:
        raise CurateError(f"{work.path('fix')}: {len(missing)} described image(s) have no fix row yet "
                          f"(e.g. {missing[0]!r}); run the fix stage first (--stages fix)")
    inputs = {r["key"]: digest(r, fixed.get(r["key"]), _rules(cfg.filter)) for r in described}
    out_path = work.path("filter")
    redone = prune(out_path, lambda r: inputs.get(r["key"]) == r.get("input"))
    output = JsonlOutput(out_path)
    counts = {"kept": 0, "rejected": 0, "already_done": 0, "redone": redone}
    rows = []
    for row in described:
        key = row["key"]
        if key in output.done:
            counts["already_done"] += 1
            continue
        verdict = decide(row, fixed.get(key), cfg.filter)
        counts["kept" if verdict["verdict"] == "keep" else "rejected"] += 1
        rows.append({"key": key, **verdict, "input": inputs[key]})
    output.write(rows)
    output.close()
    if rows or redone:
        reviewed = work.path("apply-review")
        if reviewed.exists():
            reviewed.unlink()
            log.warning("filter: verdicts changed, so %s was removed; apply the review edits again", reviewed)
    log.info("filter: %d kept, %d rejected, %d already decided", counts["kept"], counts["rejected"],
             counts["already_done"])
    return counts


def _rules(filter_cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(filter_cfg, resolve=True)
