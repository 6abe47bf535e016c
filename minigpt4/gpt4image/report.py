"""``report.html`` of the tiny demonstration: mean ± std and per-seed top-1, and a few training images with the
descriptions the tiny MiniGPT-4 wrote for them (plain and class-conditioned) next to the ground truth."""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

SHOWN_IMAGES = 6


def _rows(path: Path) -> dict:
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["key"]: r.get("caption", f"(error: {r.get('error')})") for r in rows}


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" width="112" height="112">'


def write_html(out: Path, report: dict) -> Path:
    runs = report["runs"] + [{**r, "variant": "aligned_class"} for r in report.get("runs_class_conditioned", [])]
    summary = report["summary"]
    seeds = sorted({r["seed"] for r in runs})
    e = html.escape
    parts = ["<!doctype html><meta charset='utf-8'><title>GPT4Image on the tiny world</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}td,th{border:1px solid #ccc;"
             "padding:4px 8px}table{border-collapse:collapse;margin-bottom:1.5em}</style>",
             "<h1>GPT4Image on the tiny world</h1>",
             f"<p>Label: {e(report['label'])}. Images: {e(json.dumps(report['images']))}. Top-1 on the held-out test "
             f"split of the classifier after its last epoch (no selection on the test split). "
             f"{report['seconds']:.0f} s wall, {report['cpu_seconds']:.0f} s CPU.</p>",
             "<table><tr><th>backbone</th><th>variant</th><th>top-1 mean ± std</th>"
             + "".join(f"<th>seed {s}</th>" for s in seeds) + "</tr>"]
    for key, s in summary.items():
        backbone, variant = key.split("/")
        per_seed = {r["seed"]: r["top1"] for r in runs if r["backbone"] == backbone and r["variant"] == variant}
        parts.append(f"<tr><td>{e(backbone)}</td><td>{e(variant)}</td><td><b>{s['mean']:.3f} ± {s['std']:.3f}</b></td>"
                     + "".join(f"<td>{per_seed[x]:.3f}</td>" if x in per_seed else "<td></td>" for x in seeds)
                     + "</tr>")
    quality = "; ".join(f"{k}: {v['exact']}/{v['images']} exactly right, leftmost shape right in "
                        f"{v['leftmost_shape_right']}/{v['images']}" for k, v in report.get("descriptions", {}).items())
    parts.append("</table><h2>Training images and their descriptions</h2>"
                 + (f"<p>Descriptions against the ground truth: {e(quality)}.</p>" if quality else "") + "<table>"
                 "<tr><th>image</th><th>label</th><th>descriptions</th></tr>")
    plain = _rows(out / "descriptions" / "plain.jsonl")
    cond = _rows(out / "descriptions" / "class.jsonl")
    scenes = [json.loads(line) for line in (out / "data" / "scenes.jsonl").read_text().splitlines()]
    shown = [s for s in scenes if s["split"] == "train"][:: max(1, len([s for s in scenes if s["split"] == "train"])
                                                               // SHOWN_IMAGES)][:SHOWN_IMAGES]
    for s in shown:
        texts = [f"<b>truth</b>: {e(s['truth'])}"]
        for name, table in (("plain prompt", plain), ("class-conditioned", cond)):
            if s["key"] in table:
                texts.append(f"<b>{name}</b>: {e(table[s['key']])}")
        parts.append(f"<tr><td>{_image(out / 'data' / 'train' / s['key'])}</td><td>{e(s['label'])}</td>"
                     f"<td>{'<br>'.join(texts)}</td></tr>")
    parts.append("</table>")
    path = out / "report.html"
    path.write_text("\n".join(parts))
    return path
