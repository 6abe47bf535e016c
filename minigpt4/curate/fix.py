"""The fix stage: every described paragraph through the configured fixer, one row per key in ``fixed.jsonl``.

Rows are written as each answer arrives, so a killed run loses at most the answers in flight. A row
the fixer could not fix is written with ``fix_error`` (it is not retried on the next run unless
``retry_failed`` is asked for). The fixer's counters (requests, retries, tokens, cost) of every run are
added up in ``fix_usage.json``.
"""
from __future__ import annotations

import json
import logging

from minigpt4.sharded_jsonl import JsonlOutput
from minigpt4.curate.fixers import make_fixer
from minigpt4.curate.workdir import WorkDir, by_key, digest, prune, write_json

log = logging.getLogger(__name__)


def add_usage(work: WorkDir, fixer_name: str, stats: dict) -> dict:
    path = work.root / "fix_usage.json"
    total = json.loads(path.read_text()) if path.exists() else {}
    if total.get("fixer") not in (None, fixer_name):
        total = {}  # another fixer: its counters do not add up with these
    total["fixer"] = fixer_name
    for name, value in stats.items():
        total[name] = round(total.get(name, 0) + value, 6)
    write_json(path, total)
    return total


def run_fix(cfg, work: WorkDir, *, retry_failed: bool = False, fixer=None) -> dict:
    described = [r for r in work.rows("describe", required_by="fix") if "text" in r]
    out_path = work.path("fix")
    inputs = {r["key"]: digest(r["text"]) for r in described}
    stale = prune(out_path, lambda r: inputs.get(r["key"]) == r.get("input"))  # the description changed
    retried = prune(out_path, lambda r: "fix_error" not in r) if retry_failed else 0
    if stale:
        log.info("fix: %d row(s) of %s were made from other descriptions; fixing them again", stale, out_path)
    output = JsonlOutput(out_path)
    todo = [(r["key"], r["text"]) for r in described if r["key"] not in output.done]
    counts = {"fixed": 0, "fix_failed": 0, "already_done": len(described) - len(todo), "retried": retried}
    if not todo:
        output.close()
        log.info("fix: nothing to do (%d rows already in %s)", counts["already_done"], out_path)
        return counts
    fixer = fixer or make_fixer(cfg)
    log.info("fix: %d paragraphs through the %s fixer", len(todo), fixer.name)
    try:
        for result in fixer.fix(todo):
            row = {"key": result.key, "fixer": fixer.name, "input": inputs[result.key]}
            if result.error is None:
                row["text"] = result.text
                if result.reply is not None:
                    row["reply"] = result.reply
                counts["fixed"] += 1
            else:
                row["fix_error"] = result.error
                counts["fix_failed"] += 1
            output.write([row])
    finally:
        output.close()
        counts["usage"] = fixer.stats()
        usage = add_usage(work, fixer.name, counts["usage"])
        fixer.close()
    log.info("fix: %d fixed, %d failed; this run %s; all runs %s", counts["fixed"], counts["fix_failed"],
             counts["usage"], usage)
    return counts


def fixed_rows(work: WorkDir) -> dict[str, dict]:
    return by_key(work.rows("fix", required_by="filter"))
