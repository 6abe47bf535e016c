"""Small image-text data sets for the data tests, in the layouts real users have:
img2dataset webdataset shards (``{key}.jpg``, ``{key}.json`` with ``caption``, ``{key}.txt``) and a
cc_sbu_align folder (``filter_cap.json`` + ``image/{image_id}.jpg``)."""
from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import webdataset as wds
from PIL import Image, ImageDraw

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]


def jpeg_bytes(rng: random.Random, size: int = 64, quality: int = 85) -> bytes:
    img = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = rng.randrange(size // 2), rng.randrange(size // 2)
        box = (x0, y0, x0 + rng.randrange(4, size // 2), y0 + rng.randrange(4, size // 2))
        colour = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def caption_for(shard: int, index: int, prefix: str = "photo") -> str:
    return f"A {COLOURS[(shard + index) % len(COLOURS)]} {prefix} {shard:04d} {index:05d}."


def answer_for(shard: int, index: int, prefix: str = "photo") -> str:
    """``caption_for`` after the blip_caption processor."""
    return f"a {COLOURS[(shard + index) % len(COLOURS)]} {prefix} {shard:04d} {index:05d}"


def write_shards(root: Path, num_shards: int, per_shard: int, *, size: int = 64, seed: int = 0,
                 prefix: str = "photo", bad_images: set = frozenset(), no_caption: set = frozenset(),
                 no_image: set = frozenset(), png: set = frozenset()) -> list[Path]:
    """``root/{00000..}.tar``; the sets hold (shard, index) pairs to break in the named way."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(num_shards):
        path = root / f"{s:05d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(per_shard):
                key = f"{s:05d}{i:04d}"
                caption = caption_for(s, i, prefix)
                sample = {"__key__": key, "txt": caption}
                meta = {"url": f"http://example.com/{key}.jpg", "key": key, "status": "success",
                        "caption": caption, "width": size, "height": size}
                if (s, i) in no_caption:
                    del sample["txt"]
                    meta["caption"] = None
                sample["json"] = json.dumps(meta).encode()
                if (s, i) not in no_image:
                    data = jpeg_bytes(rng, size)
                    if (s, i) in bad_images:
                        data = data[: len(data) // 3]  # truncated JPEG
                    if (s, i) in png:
                        buf = io.BytesIO()
                        Image.open(io.BytesIO(data)).save(buf, format="PNG")
                        sample["png"] = buf.getvalue()
                    else:
                        sample["jpg"] = data
                sink.write(sample)
        paths.append(path)
    return paths


def truncate_inside_member(path: Path, member_index: int) -> list[str]:
    """Cut the tar in the middle of member ``member_index``'s data; return the names of the members
    that are still complete."""
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    cut = members[member_index]
    data = path.read_bytes()[: cut.offset_data + cut.size // 2]
    path.write_bytes(data)
    return [m.name for m in members[:member_index]]


def write_align(root: Path, n: int, *, size: int = 64, seed: int = 0, missing: set = frozenset(),
                broken: set = frozenset()) -> Path:
    """``root/filter_cap.json`` + ``root/image/{image_id}.jpg`` with ids ``1000 + i``."""
    rng = random.Random(seed)
    (root / "image").mkdir(parents=True, exist_ok=True)
    anns = []
    for i in range(n):
        image_id = 1000 + i
        anns.append({"image_id": image_id, "caption": f"The image shows item {i}. It is Nice!"})
        if i in missing:
            continue
        data = jpeg_bytes(rng, size)
        (root / "image" / f"{image_id}.jpg").write_bytes(data[:20] if i in broken else data)
    (root / "filter_cap.json").write_text(json.dumps({"annotations": anns}))
    return root
