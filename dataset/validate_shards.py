"""Check downloaded data before training: samples, bad samples by reason, caption lengths, image sizes.

    python dataset/validate_shards.py /data/laion_dataset                 # a folder of .tar shards
    python dataset/validate_shards.py "/data/cc_sbu_dataset/{00000..01255}.tar" --workers 8 --json report.json
    python dataset/validate_shards.py /data/cc_sbu_align                  # filter_cap.json + image/

Shards are read with the same code the training loader uses (minigpt4.datasets.webdata), so a sample
reported bad here is a sample training skips, for the same reason. Exit status 1 with --strict when
anything was skipped. Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image
from webdataset.tariterators import group_by_keys

from minigpt4.datasets import skips
from minigpt4.datasets.storage import expand_storage
from minigpt4.datasets.webdata import IMAGE_KEYS, check_samples, number_samples, tar_members


def _image_size(data: bytes, decode: bool) -> tuple[int, int]:
    import io

    with Image.open(io.BytesIO(data)) as img:
        if decode:
            img.load()
        return img.size


def validate_shard(url: str, decode: bool = True) -> dict:
    """Counts for one shard: samples (tar sample groups), good ones, skips by reason, caption words, sizes."""
    counter = skips.SkipCounter(url, keep_details=3)
    raw = 0

    def counted(src):
        nonlocal raw
        for sample in src:
            raw += 1
            yield sample

    samples = group_by_keys(tar_members([{"url": url}], counter), handler=counter.handler(skips.BAD_SAMPLE))
    words, chars, sizes, good = [], [], Counter(), 0
    for sample in check_samples(number_samples(counted(samples), 0, counter), counter):
        key = next(k for k in IMAGE_KEYS if k in sample)
        try:
            sizes["x".join(map(str, _image_size(sample[key], decode)))] += 1
        except Exception as exn:  # noqa: BLE001
            counter.add(skips.BAD_IMAGE, f"{url}:{sample['__key__']}: {exn!r}")
            continue
        good += 1
        words.append(len(sample["__caption__"].split()))
        chars.append(len(sample["__caption__"]))
    return {"shard": url, "samples": raw, "good": good, "skipped": counter.take(),
            "examples": counter.take_details(), "caption_words": words, "caption_chars": chars,
            "image_sizes": dict(sizes)}


def _stats(values: list[int]) -> dict:
    if not values:
        return {}
    return {"min": min(values), "mean": round(statistics.fmean(values), 2), "median": statistics.median(values),
            "max": max(values)}


def summarise(per_shard: list[dict]) -> dict:
    skipped, sizes, words, chars, bad_shards = Counter(), Counter(), [], [], []
    for r in per_shard:
        skipped.update(r["skipped"])
        sizes.update(r["image_sizes"])
        words += r["caption_words"]
        chars += r["caption_chars"]
        if r["skipped"]:
            bad_shards.append({"shard": r["shard"], "skipped": r["skipped"], "examples": r["examples"]})
    return {"shards": len(per_shard), "samples": sum(r["samples"] for r in per_shard),
            "good": sum(r["good"] for r in per_shard), "skipped": dict(sorted(skipped.items())),
            "caption_words": _stats(words), "caption_chars": _stats(chars),
            "image_sizes": dict(sizes.most_common(5)), "shards_with_problems": bad_shards}


def validate_align(folder: Path, decode: bool = True) -> dict:
    """Same summary for a cc_sbu_align folder (filter_cap.json + image/)."""
    from minigpt4.datasets.align import _find_image, read_annotations

    counter = skips.SkipCounter(str(folder), keep_details=3)
    words, chars, sizes, good, anns = [], [], Counter(), 0, read_annotations(folder)
    for ann in anns:
        path = _find_image(folder / "image", ann["image_id"])
        if path is None:
            counter.add(skips.MISSING_IMAGE, f"image_id {ann['image_id']}")
            continue
        try:
            sizes["x".join(map(str, _image_size(path.read_bytes(), decode)))] += 1
        except Exception as exn:  # noqa: BLE001
            counter.add(skips.BAD_IMAGE, f"{path}: {exn!r}")
            continue
        good += 1
        words.append(len(ann["caption"].split()))
        chars.append(len(ann["caption"]))
    return {"folder": str(folder), "samples": len(anns), "good": good, "skipped": dict(sorted(counter.take().items())),
            "examples": counter.take_details(), "caption_words": _stats(words), "caption_chars": _stats(chars),
            "image_sizes": dict(sizes.most_common(5))}


def print_summary(s: dict) -> None:
    where = f"{s['shards']} shards" if "shards" in s else s["folder"]
    print(f"{where}: {s['samples']} samples, {s['good']} good")
    print("skipped: " + skips.format_counts(s["skipped"]))
    for key in ("caption_words", "caption_chars"):
        if s[key]:
            print(f"{key.replace('_', ' ')}: " + ", ".join(f"{k} {v}" for k, v in s[key].items()))
    if s["image_sizes"]:
        print("most common image sizes: " + ", ".join(f"{k} ({v})" for k, v in s["image_sizes"].items()))
    for shard in s.get("shards_with_problems", [])[:20]:
        print(f"  {shard['shard']}: {skips.format_counts(shard['skipped'])}")
        for reason, detail in shard["examples"]:
            print(f"      {reason}: {detail}")
    for reason, detail in s.get("examples", []):
        print(f"  {reason}: {detail}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("storage", nargs="+", help="shard folder(s), brace patterns or globs; or a cc_sbu_align folder")
    parser.add_argument("--workers", type=int, default=1, help="processes reading shards in parallel")
    parser.add_argument("--no-decode", action="store_true", help="only read image headers (faster, misses truncation)")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary as JSON here ('-' = stdout)")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 if any sample was skipped")
    args = parser.parse_args(argv)
    decode = not args.no_decode
    first = Path(args.storage[0])
    if len(args.storage) == 1 and (first / "filter_cap.json").is_file():
        summary = validate_align(first, decode)
    else:
        try:
            urls = expand_storage("validate", args.storage)
        except FileNotFoundError:
            print(f"no .tar shard matches {' '.join(args.storage)}", file=sys.stderr)
            return 2
        if args.workers > 1:
            with ProcessPoolExecutor(args.workers) as pool:
                per_shard = list(pool.map(validate_shard, urls, [decode] * len(urls), chunksize=4))
        else:
            per_shard = [validate_shard(u, decode) for u in urls]
        summary = summarise(per_shard)
    if args.json is not None and str(args.json) == "-":
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary)
        if args.json is not None:
            args.json.write_text(json.dumps(summary, indent=2))
    return 1 if args.strict and summary["skipped"] else 0


if __name__ == "__main__":
    sys.exit(main())
