"""The manual pass: a self-contained HTML page, and applying a person's edits back.

``review.html`` shows, per image: the picture (inlined, no other file needed), the raw description, the
fixed text, the verdict and its reason. Each text can be edited and each row kept or rejected in the
page; "Download edits" saves ``review_edits.jsonl`` with one line per changed row::

    {"key": "0001.jpg", "text": "A corrected description."}
    {"key": "0002.jpg", "reject": true, "reason": "describes another picture"}
    {"key": "0003.jpg", "reject": false}            # keep a row the filter rejected

The same file can be written by hand (one line per key: a key edited on two lines is refused).
``apply-review`` (or ``--review-edits FILE``) turns the filter's verdicts plus these edits into
``reviewed.jsonl``, which export then reads instead of ``filtered.jsonl``.
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging
from pathlib import Path


from minigpt4.images import open_image
from minigpt4.curate.config import CurateError
from minigpt4.curate.workdir import WorkDir, by_key, numbered_rows, write_atomic
from minigpt4.errors import UserError, read_text_file

log = logging.getLogger(__name__)

EDIT_KEYS = {"key", "text", "reject", "reason"}

_STYLE = """body{font-family:sans-serif;margin:1em;max-width:1200px}
.row{display:grid;grid-template-columns:220px 1fr 1fr;gap:12px;border-top:1px solid #ccc;padding:10px 0}
.row img{max-width:210px;height:auto}.keep{color:#075}.reject{color:#a00}
textarea{width:100%;min-height:8em}.raw{white-space:pre-wrap;color:#444}.key{font-size:.8em;color:#666}"""

_SCRIPT = """function edits(){const out=[];for(const r of document.querySelectorAll('.row')){
const e={key:r.dataset.key},t=r.querySelector('textarea'),rj=r.querySelector('.rej').checked;
if(t.value!==t.defaultValue)e.text=t.value;
if(rj!==(r.dataset.verdict==='reject')){e.reject=rj;if(rj)e.reason=r.querySelector('.why').value||'review';}
if(Object.keys(e).length>1)out.push(JSON.stringify(e));}return out;}
function save(){const lines=edits();const b=new Blob([lines.join('\\n')+(lines.length?'\\n':'')],
{type:'application/jsonl'});const a=document.createElement('a');a.href=URL.createObjectURL(b);
a.download='review_edits.jsonl';a.click();document.getElementById('n').textContent=lines.length+' edit(s) saved';}"""


def image_data_uri(path: str | None, max_side: int) -> str | None:
    if not path:
        return None
    try:
        img = open_image(path)
        img.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
    except (OSError, ValueError):  # a missing or unreadable picture: the row shows "(no image)"
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _row_html(described: dict, verdict: dict, max_side: int) -> str:
    e = html.escape
    uri = image_data_uri(described.get("image"), max_side)
    picture = f'<img src="{uri}" alt="{e(described["key"])}">' if uri else "<p>(no image)</p>"
    raw = described.get("text") or described.get("error", "")
    cont = " (first answer + Continue)" if described.get("continued") else ""
    status = verdict["verdict"]
    reason = f" &mdash; {e(verdict['reason'])}: {e(verdict.get('detail') or '')}" if status == "reject" else ""
    checked = " checked" if status == "reject" else ""
    return (f'<div class="row" data-key="{e(described["key"])}" data-verdict="{status}">'
            f'<div>{picture}<div class="key">{e(described["key"])}</div></div>'
            f'<div><b>Raw description</b>{cont}<div class="raw">{e(raw)}</div></div>'
            f'<div><b class="{status}">{status}</b>{reason}<textarea>{e(verdict.get("text") or "")}</textarea>'
            f'<label><input type="checkbox" class="rej"{checked}> reject</label> '
            f'<input class="why" placeholder="reason"></div></div>')


def run_review(cfg, work: WorkDir) -> dict:
    described = work.rows("describe", required_by="review")
    verdicts = by_key(work.rows("filter", required_by="review"))
    missing = [r["key"] for r in described if r["key"] not in verdicts]
    if missing:
        raise CurateError(f"{work.path('filter')}: {len(missing)} image(s) have no verdict yet "
                          f"(e.g. {missing[0]!r}); run the filter stage first (--stages filter)")
    kept = sum(v["verdict"] == "keep" for v in verdicts.values())
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Review: {len(described)} images</title>",
             f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>",
             f"<h1>Stage-2 data review</h1><p>{len(described)} images, {kept} kept, {len(described) - kept} "
             "rejected. Edit texts, tick or untick <i>reject</i>, then "
             "<button onclick='save()'>Download edits</button> <span id='n'></span> and run "
             "<code>python -m minigpt4.curate ... --stages apply-review,export --review-edits "
             "review_edits.jsonl</code>.</p>"]
    parts += [_row_html(row, verdicts[row["key"]], int(cfg.review.max_image_side)) for row in described]
    parts.append("</body></html>\n")
    write_atomic(work.path("review"), "\n".join(parts))
    log.info("review: %s (%d rows)", work.path("review"), len(described))
    return {"rows": len(described)}


def parse_edits(path: str | Path) -> list[tuple[str, dict]]:
    """``(where, edit)`` of every edit row of ``path`` (its last line counts even without a newline), each
    checked on its own; a key edited on two lines is refused (which one should win?). Run before any stage."""
    path = Path(path)
    try:
        text = read_text_file(path, "--review-edits / curate.review.edits")
    except UserError as exc:
        raise CurateError(str(exc)) from None
    edits, first = [], {}
    for number, edit in numbered_rows(text, path, drop_cut_line=False):
        where = f"{path}:{number} (key {edit['key']!r})"
        if edit["key"] in first:
            raise CurateError(f"{where}: the key is edited again (first at line {first[edit['key']]}); give each "
                              "key one line, with all of its fields")
        first[edit["key"]] = number
        unknown = set(edit) - EDIT_KEYS
        if unknown:
            raise CurateError(f"{where}: unknown field {sorted(unknown)[0]!r}; allowed: key, text, reject, reason")
        if "text" in edit and not (isinstance(edit["text"], str) and edit["text"].strip()):
            raise CurateError(f"{where}: 'text' must be a non-empty string")
        if "reject" in edit and not isinstance(edit["reject"], bool):
            raise CurateError(f"{where}: 'reject' must be true or false")
        if "reason" in edit and not isinstance(edit["reason"], str):
            raise CurateError(f"{where}: 'reason' must be a string")
        edits.append((where, edit))
    return edits


def read_edits(path: str | Path, known: set[str]) -> list[dict]:
    """The checked edits of ``path``, each naming a key of ``known`` (the filtered rows)."""
    edits = parse_edits(path)
    for where, edit in edits:
        if edit["key"] not in known:
            raise CurateError(f"{where}: no such key in the filtered rows")
    return [edit for _, edit in edits]


def apply_edits(verdicts: list[dict], described: dict[str, dict], edits: list[dict]) -> tuple[list[dict], dict]:
    """The filter's rows with the edits applied, and counts (:func:`read_edits` gives one edit per key; here a
    later edit of a key would win)."""
    rows = {v["key"]: dict(v) for v in verdicts}
    counts = {"edited": 0, "rejected_by_review": 0, "restored_by_review": 0}
    for edit in edits:
        row = rows[edit["key"]]
        if "text" in edit:
            row["text"], row["source"] = edit["text"].strip(), "review"
            counts["edited"] += 1
        if edit.get("reject") is True:
            row.update(verdict="reject", reason="review", detail=edit.get("reason", ""))
            counts["rejected_by_review"] += 1
        elif row["verdict"] == "reject" and (edit.get("reject") is False or "text" in edit):
            if not row.get("text"):
                row["text"] = described.get(edit["key"], {}).get("text")
            if not row.get("text"):
                raise CurateError(f"review edit of {edit['key']!r}: the image has no description to keep; "
                                  "give a 'text'")
            row.update(verdict="keep", reason="", detail="", source=row.get("source", "review"))
            counts["restored_by_review"] += 1
    return list(rows.values()), counts


def run_apply_review(cfg, work: WorkDir, edits_path: str | Path | None = None) -> dict:
    edits_path = edits_path or cfg.review.edits
    if not edits_path:
        raise CurateError("the apply-review stage needs --review-edits FILE (or curate.review.edits)")
    verdicts = work.rows("filter", required_by="apply-review")
    described = by_key(work.rows("describe", required_by="apply-review"))
    edits = read_edits(edits_path, {v["key"] for v in verdicts})
    rows, counts = apply_edits(verdicts, described, edits)
    write_atomic(work.path("apply-review"), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    log.info("apply-review: %d edit line(s) from %s: %s", len(edits), edits_path, counts)
    return {"edits": len(edits), **counts}
