"""The export stage: the kept rows as a ``cc_sbu_align`` folder, and the run's summary.

    <out>/image/<image_id>.jpg
    <out>/filter_cap.json     {"annotations": [{"image_id": ..., "caption": ...}, ...]}
    <out>/source_keys.json    {"<image_id>": "<key of the image in the input>", ...}
    <work_dir>/summary.json

``image_id`` is the image's key with every character other than letters, digits, ``_`` and ``-``
replaced by ``_`` (and the extension dropped); a clash gets ``_2``, ``_3``... in input order.
Images are converted to RGB JPEG; one already exported is not written again; images of rows no
longer kept are removed. ``filter_cap.json`` is written last and whole, so a killed export leaves
either the previous complete annotation file or none, and running it again finishes the job.
"""
from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path


from minigpt4.images import open_image
from minigpt4.curate.config import CurateError
from minigpt4.curate.workdir import WorkDir, by_key, write_json

log = logging.getLogger(__name__)


def image_ids(keys: list[str]) -> dict[str, str]:
    out, used = {}, set()
    for key in keys:
        stem = key.rsplit(".", 1)[0] if "." in key.rsplit("/", 1)[-1] else key
        base = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "image"
        candidate, n = base, 1
        while candidate in used:
            n += 1
            candidate = f"{base}_{n}"
        used.add(candidate)
        out[key] = candidate
    return out


def export_dir(cfg, work: WorkDir) -> Path:
    return Path(cfg.export.out) if cfg.export.out else work.root / "cc_sbu_align"


def run_export(cfg, work: WorkDir) -> dict:
    described = work.rows("describe", required_by="export")
    selected = by_key(work.selected_rows())
    missing = [r["key"] for r in described if r["key"] not in selected]
    if missing:
        raise CurateError(f"{work.path('filter')}: {len(missing)} image(s) have no verdict yet "
                          f"(e.g. {missing[0]!r}); run the filter stage first (--stages filter)")
    kept = [r for r in described if selected[r["key"]]["verdict"] == "keep"]
    ids = image_ids([r["key"] for r in kept])
    out = export_dir(cfg, work)
    image_dir = out / "image"
    image_dir.mkdir(parents=True, exist_ok=True)
    written = reused = 0
    for row in kept:
        target = image_dir / f"{ids[row['key']]}.jpg"
        if target.exists():
            reused += 1
            continue
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            open_image(row["image"]).save(tmp, format="JPEG", quality=int(cfg.export.jpeg_quality))
        except (OSError, ValueError, KeyError) as exc:
            raise CurateError(f"export {row['key']}: cannot read its image {row.get('image')!r} ({exc})") from None
        tmp.replace(target)
        written += 1
    wanted = {f"{i}.jpg" for i in ids.values()}
    removed = 0
    for path in image_dir.iterdir():
        if path.name not in wanted:
            path.unlink()
            removed += 1
    anns = [{"image_id": ids[r["key"]], "caption": selected[r["key"]]["text"]} for r in kept]
    write_json(out / "source_keys.json", {ids[r["key"]]: r["key"] for r in kept})
    write_json(out / "filter_cap.json", {"annotations": anns})
    log.info("export: %d pairs in %s (%d images written, %d already there, %d removed)", len(anns), out,
             written, reused, removed)
    if not anns:
        log.warning("export: %s holds 0 pairs (%d image(s), none kept; the reasons are in %s): stage-2 "
                    "training refuses an empty cc_sbu_align; loosen curate.filter, use another fixer, or keep "
                    "rows in the review", out / "filter_cap.json", len(described), work.path("summary"))
    summary = write_summary(cfg, work)
    return {"exported": len(anns), "images_written": written, "images_reused": reused, "images_removed": removed,
            "summary": summary}


def summarize(work: WorkDir) -> dict:
    """Counts of every stage from the files in the work folder (what is there now, whichever run made it)."""
    described = work.rows("describe")
    fixed = by_key(work.rows("fix"))
    selected = work.selected_rows() if work.path("filter").exists() else []
    ok = [r for r in described if "text" in r]
    rejected = Counter(r["reason"] for r in selected if r["verdict"] == "reject")
    summary = {
        "images": len(described),
        "described": len(ok),
        "describe_errors": len(described) - len(ok),
        "continued": sum(bool(r.get("continued")) for r in ok),
        "fixed": sum("text" in fixed.get(r["key"], {}) for r in ok),
        "fix_failures": sum("fix_error" in fixed.get(r["key"], {}) for r in ok),
        "rejected": sum(rejected.values()),
        "rejected_by_reason": dict(sorted(rejected.items())),
        "kept": sum(r["verdict"] == "keep" for r in selected),
        "reviewed": work.path("apply-review").exists(),
    }
    usage = work.root / "fix_usage.json"
    if usage.exists():
        summary["fix_usage"] = json.loads(usage.read_text())
    return summary


def write_summary(cfg, work: WorkDir) -> dict:
    summary = summarize(work)
    summary["export"] = str(export_dir(cfg, work))
    write_json(work.path("summary"), summary)
    return summary
