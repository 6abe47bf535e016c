"""The tiny world's report page: one self-contained HTML file with the metrics (defined on the page), the
curation summary, each training run's loss curve and held-out images with every model's outputs."""
from __future__ import annotations

import base64
import html
from pathlib import Path

LABELS = {"control": "control (projection at initialisation)", "stage1": "stage 1 (captions)",
          "stage2": "stage 2 (ground-truth descriptions)", "stage2_curated": "stage 2 (curated by the stage-1 model)"}

DEFINITIONS = """
<dl>
<dt>attribute accuracy (caption)</dt>
<dd>The stage-1 format: image tokens only, no prompt, greedy. An image counts when the caption names every
object's colour and shape, left to right, and nothing else ("a red circle and a blue square").</dd>
<dt>malformed rate (conversation)</dt>
<dd>The stage-2 training template (<code>###Human: &lt;Img&gt;...&lt;/Img&gt; instruction ###Assistant:</code>,
the instructions of prompts/alignment.txt), greedy, up to {tokens} tokens. An answer is malformed when it does
not end with <code>###</code> within that budget, is empty, repeats a sentence, contains a sentence outside
the world's description grammar (a fragment such as "The There is bigger than the red triangle."), or is
not, sentence by sentence, the description of any possible scene (it compares objects it never described
or an object with itself, stops before its closing sentence, or uses a slot its count rules out). These
checks read only the answer, never the ground truth.</dd>
<dt>description accuracy (conversation)</dt>
<dd>The share of answers that are well formed and state exactly the ground truth: the number of shapes, each
object's place, size, colour and shape, and the size comparison.</dd>
</dl>
<p>Stage 2 replaces the caption behaviour: it retrains the same projection for the conversation template, as
in the original, so caption accuracy after stage 2 is 0 by design (the stage-1 checkpoint is kept for
captions). The stage-1 model is judged on conversations it was never trained for: that is the failure mode
stage 2 exists to repair.</p>
"""


def _img(path: Path, width: int | None = None, mime: str = "image/jpeg") -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    size = f" width={width}" if width else ""
    return f"<img src='data:{mime};base64,{data}'{size}>"


def _summary(results: dict) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(LABELS.get(n, n))}</td><td>{r['attribute_accuracy']:.3f}</td>"
        f"<td>{r['malformed_rate']:.3f}</td><td>{r['description_accuracy']:.3f}</td></tr>" for n, r in results.items())
    return ("<table class=summary><tr><th>model</th><th>attribute accuracy (caption)</th><th>malformed rate</th>"
            f"<th>description accuracy</th></tr>{rows}</table>")


def _curation(summary: dict | None) -> str:
    if not summary:
        return ""
    rejected = summary.get("rejected_by_reason", {})
    reasons = ", ".join(f"{html.escape(k)} {v}" for k, v in rejected.items()) or "none"
    review = summary.get("review") or {}
    why = ", ".join(f"{html.escape(k)} {v}" for k, v in review.get("rejected_by_reason", {}).items())
    reviewed = (f", the review ({html.escape(str(review.get('by', '')))}) edited {review.get('edited', 0)}"
                + (f" and rejected {review.get('rejected', 0)}: {why}" if why else "") if review else "")
    return (f"<h2>Curation</h2><p>The stage-1 model described {summary.get('described', 0)} training images with the "
            f"paper's prompt ({summary.get('continued', 0)} answers were continued with the paper's "
            f"<code>Continue</code> turn), the <code>{html.escape(str(summary.get('fixer', '')))}</code> fixer "
            f"changed {summary.get('changed_by_fixer', summary.get('fixed', 0))}{reviewed}, "
            f"{summary.get('rejected', 0)} were rejected ({reasons}) and {summary.get('kept', 0)} were kept as the "
            "curated stage-2 set.</p>")


def _curves(curves: dict[str, Path]) -> str:
    figs = [f"<figure>{_img(p, 460, 'image/png')}<figcaption>{html.escape(LABELS.get(n, n))}: "
            f"{html.escape(str(p))}</figcaption></figure>" for n, p in curves.items() if Path(p).exists()]
    return "<h2>Loss curves</h2><div class=curves>" + "".join(figs) + "</div>" if figs else ""


def _samples(results: dict, image_root: Path, shown: int) -> str:
    names = list(results)
    head = "".join(f"<th>{html.escape(LABELS.get(n, n))}</th>" for n in names)
    mark = lambda ok: "ok" if ok else "wrong"  # noqa: E731
    rows = []
    for i, s in enumerate(results[names[0]]["samples"][:shown]):
        cells = []
        for n in names:
            o = results[n]["samples"][i]
            flags = "malformed: " + ", ".join(o["reasons"]) if o["malformed"] else mark(o["correct"])
            cells.append(f"<td><b>caption</b> ({mark(o['caption_correct'])}): {html.escape(o['caption'])}<br>"
                         f"<b>{html.escape(o['instruction'])}</b> ({html.escape(flags)}): "
                         f"{html.escape(o['answer'])}</td>")
        rows.append(f"<tr><td>{_img(Path(image_root) / s['image'], 112)}<br><small>{html.escape(s['truth_caption'])}"
                    f"<br>{html.escape(s['truth_description'])}</small></td>" + "".join(cells) + "</tr>")
    return f"<table><tr><th>image / truth</th>{head}</tr>" + "".join(rows) + "</table>"


def write_page(path: Path, results: dict[str, dict], image_root: Path, *, curves: dict[str, Path] | None = None,
               curation: dict | None = None, answer_tokens: int = 96, max_images: int = 40) -> Path:
    """Write the page; ``results`` maps a model name to :func:`~minigpt4.tiny_world.evaluate.evaluate`'s output."""
    total = len(next(iter(results.values()))["samples"])
    shown = min(max_images, total)
    page = ("<!doctype html><meta charset='utf-8'><title>MiniGPT-4 tiny world</title>"
            "<style>body{font-family:sans-serif;max-width:1600px}td{vertical-align:top;border-top:1px solid #ccc;"
            "padding:4px;max-width:340px;font-size:13px}.summary td{font-size:15px}dd{margin-bottom:8px}"
            ".curves{display:flex;flex-wrap:wrap;gap:12px}figcaption{font-size:12px}</style>"
            f"<h1>MiniGPT-4 tiny world: {total} held-out images</h1>{_summary(results)}"
            f"<h2>What the numbers mean</h2>{DEFINITIONS.format(tokens=answer_tokens)}{_curation(curation)}"
            f"{_curves(curves or {})}<h2>Held-out images</h2><p>The first {shown} of the {total} held-out images "
            f"(never seen in training); the figures above are over all {total}.</p>"
            f"{_samples(results, image_root, shown)}")
    Path(path).write_text(page)
    return Path(path)
