"""Turn BLIP's caption lists (a JSON array of ``{"url": ..., "caption": ...}``) into the url/caption
table img2dataset reads (TSV as the original, or parquet), without loading the whole list in memory:
``laion_synthetic_filtered_large.json`` holds about 115 million records.

Used by ``convert_laion.py`` and ``convert_cc_sbu.py``; nothing here downloads anything.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path
from typing import Iterable, Iterator, TextIO

BLIP_URL = "https://storage.googleapis.com/sfr-vision-language-research/BLIP/datasets/"
_WS = re.compile(r"\s+")
_CHUNK = 1 << 20


def iter_json_array(stream: TextIO, chunk_size: int = _CHUNK) -> Iterator:
    """Items of a top-level JSON array, read incrementally (``json.JSONDecoder.raw_decode`` per item)."""
    decoder = json.JSONDecoder()
    buf, pos, started = "", 0, False
    eof = False
    while True:
        # skip whitespace and separators; refill when the buffer runs low
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n":
                pos += 1
            if pos < len(buf) or eof:
                break
            buf, pos = stream.read(chunk_size), 0
            eof = buf == ""
        if pos >= len(buf):
            raise ValueError("unexpected end of input: the JSON array is not closed" if started
                             else "empty input: expected a JSON array")
        ch = buf[pos]
        if not started:
            if ch != "[":
                raise ValueError(f"expected a JSON array, found {ch!r}")
            started, pos = True, pos + 1
            continue
        if ch == "]":
            return
        if ch == ",":
            pos += 1
            continue
        while True:
            try:
                item, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError:
                more = stream.read(chunk_size)
                if not more:
                    raise
                buf, pos = buf[pos:] + more, 0
                continue
            # a number or literal cut by the chunk boundary ("2." + "5") is only complete when a
            # delimiter follows it
            complete = end < len(buf) and buf[end] in ",] \t\r\n"
            if not complete and not eof and not isinstance(item, (dict, list, str)):
                more = stream.read(chunk_size)
                if more:
                    buf, pos = buf[pos:] + more, 0
                    continue
            break
        yield item
        pos = end  # no slicing per item: the buffer is compacted only when it is refilled


def clean_caption(caption) -> str | None:
    """One line of text (tabs/newlines to spaces) or None when there is no usable caption."""
    if isinstance(caption, list):
        caption = next((c for c in caption if isinstance(c, str) and c.strip()), None)
    if not isinstance(caption, str):
        return None
    caption = _WS.sub(" ", caption).strip()
    return caption or None


def rows(records: Iterable, stats: dict) -> Iterator[tuple[str, str]]:
    for record in records:
        stats["records"] += 1
        url = record.get("url") if isinstance(record, dict) else None
        caption = clean_caption(record.get("caption")) if isinstance(record, dict) else None
        if not isinstance(url, str) or not url.strip():
            stats["no_url"] += 1
            continue
        if caption is None:
            stats["no_caption"] += 1
            continue
        stats["rows"] += 1
        yield url.strip(), caption


def write_tsv(pairs: Iterable[tuple[str, str]], out: Path) -> None:
    with open(out, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        writer.writerow(["url", "caption"])
        writer.writerows(pairs)


def write_parquet(pairs: Iterable[tuple[str, str]], out: Path, rows_per_group: int = 1_000_000) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exn:  # img2dataset depends on pyarrow, so its users have it
        raise SystemExit("--format parquet needs pyarrow (pip install pyarrow); or use --format tsv") from exn
    schema = pa.schema([("url", pa.string()), ("caption", pa.string())])
    with pq.ParquetWriter(str(out), schema) as writer:
        urls, caps = [], []
        for url, cap in pairs:
            urls.append(url)
            caps.append(cap)
            if len(urls) >= rows_per_group:
                writer.write_table(pa.table({"url": urls, "caption": caps}, schema=schema))
                urls, caps = [], []
        if urls:
            writer.write_table(pa.table({"url": urls, "caption": caps}, schema=schema))


def convert(src: Path, out: Path, fmt: str) -> dict:
    stats = {"records": 0, "rows": 0, "no_url": 0, "no_caption": 0}
    with open(src, encoding="utf-8") as f:
        pairs = rows(iter_json_array(f), stats)
        (write_parquet if fmt == "parquet" else write_tsv)(pairs, out)
    return stats


def img2dataset_command(table: Path, fmt: str, output_folder: str) -> str:
    return (f"img2dataset --url_list {table} --input_format \"{fmt}\" --url_col \"url\" --caption_col \"caption\" "
            f"--output_format webdataset --output_folder {output_folder} --processes_count 16 --thread_count 128 "
            f"--image_size 224 --enable_wandb True")


def main(default_json: str, output_folder: str, argv=None) -> int:
    parser = argparse.ArgumentParser(description=f"Convert BLIP's {default_json} (a JSON list of url/caption "
                                     "records) into the table img2dataset reads. Downloads nothing.")
    parser.add_argument("--input", type=Path, default=Path(default_json), help="the BLIP caption JSON list")
    parser.add_argument("--output", type=Path, default=None, help="output table (default: input name + .tsv/.parquet)")
    parser.add_argument("--format", choices=["tsv", "parquet"], default="tsv")
    args = parser.parse_args(argv)
    if not args.input.is_file():
        print(f"{args.input} not found. Download it first:\n  wget {BLIP_URL}{default_json}", file=sys.stderr)
        return 2
    out = args.output or args.input.with_suffix("." + args.format)
    stats = convert(args.input, out, args.format)
    print(f"wrote {stats['rows']} rows to {out} ({stats['records']} records; skipped {stats['no_url']} "
          f"without url, {stats['no_caption']} without caption)")
    print("Next, download the images as 224 px webdataset shards:\n  " + img2dataset_command(out, args.format,
                                                                                              output_folder))
    return 0
