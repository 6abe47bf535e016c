"""Write the tiny world to disk in the formats the real pipeline reads.

- ``laion/{00000..}.tar``: webdataset shards as img2dataset writes them (``{key}.jpg``, ``{key}.json`` with
  ``caption``, ``{key}.txt``);
- ``cc_sbu_align/``: ``image/{id}.jpg`` + ``filter_cap.json`` (``{"annotations": [{"image_id", "caption"}]}``)
  with the detailed descriptions as captions;
- ``eval/{split}.jsonl`` + ``eval/{split}/{id}.jpg``: held-out images with their ground truth.

Byte-for-byte reproducible from the seed: fixed RNG streams, fixed JPEG settings, fixed tar headers.
"""
from __future__ import annotations

import io
import json
import random
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

from minigpt4.tiny_world import text as T
from minigpt4.tiny_world.scenes import Scene, WorldSpec, render, sample_scene

JPEG_QUALITY = 95
FORMAT_VERSION = 1


@dataclass(frozen=True)
class DataSpec:
    seed: int = 0
    laion_images: int = 8000
    shard_size: int = 1000
    align_images: int = 400
    eval_images: int = 200
    world: WorldSpec = WorldSpec()


def jpeg_bytes(scene: Scene, world: WorldSpec) -> bytes:
    buf = io.BytesIO()
    render(scene, world).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
    tar.addfile(info, io.BytesIO(data))


def _dumps(obj) -> bytes:
    return json.dumps(obj, sort_keys=True).encode()


def scenes(seed: int, stream: str, count: int, world: WorldSpec, exclude: set | None = None) -> list[Scene]:
    """``count`` scenes from the RNG stream (seed, stream); scenes whose signature is in ``exclude`` are
    redrawn, so held-out splits never repeat a training image."""
    rng = random.Random(f"{seed}/{stream}")
    out = []
    while len(out) < count:
        s = sample_scene(rng, world)
        if exclude is None or s.signature() not in exclude:
            out.append(s)
    return out


def write_laion(folder: Path, items: list[Scene], shard_size: int, world: WorldSpec) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard in range((len(items) + shard_size - 1) // shard_size):
        path = folder / f"{shard:05d}.tar"
        tmp = path.with_name(path.name + ".tmp")
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(shard * shard_size, min(len(items), (shard + 1) * shard_size)):
                key = f"{shard:05d}{i - shard * shard_size:04d}"
                cap = T.caption(items[i])
                _add(tar, f"{key}.jpg", jpeg_bytes(items[i], world))
                _add(tar, f"{key}.txt", cap.encode())
                _add(tar, f"{key}.json", _dumps({"caption": cap, "key": key, "status": "success", "url": f"tiny://{key}",
                                                 "width": world.image_size, "height": world.image_size,
                                                 "objects": items[i].to_json()}))
        tmp.replace(path)
        paths.append(path)
    return paths


def write_align(folder: Path, items: list[Scene], world: WorldSpec) -> None:
    (folder / "image").mkdir(parents=True, exist_ok=True)
    annotations = []
    for i, scene in enumerate(items):
        (folder / "image" / f"{i}.jpg").write_bytes(jpeg_bytes(scene, world))
        annotations.append({"image_id": str(i), "caption": T.description(scene)})
    (folder / "filter_cap.json").write_text(json.dumps({"annotations": annotations}, indent=1))


def write_eval(folder: Path, split: str, items: list[Scene], world: WorldSpec) -> Path:
    (folder / split).mkdir(parents=True, exist_ok=True)
    lines = []
    for i, scene in enumerate(items):
        rel = f"{split}/{i}.jpg"
        (folder / rel).write_bytes(jpeg_bytes(scene, world))
        lines.append(json.dumps({"id": i, "image": rel, "caption": T.caption(scene), "header": T.header(scene),
                                 "description": T.description(scene), "objects": scene.to_json()}, sort_keys=True))
    path = folder / f"{split}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def read_eval(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    for row in rows:
        row["scene"] = Scene.from_json(row["objects"])
    return rows


def write_world(out: Path, spec: DataSpec) -> dict:
    """Write every split under ``out`` (reused when ``out/manifest.json`` says the same spec)."""
    out = Path(out)
    manifest = {"format": FORMAT_VERSION, "spec": asdict(spec)}
    mpath = out / "manifest.json"
    if mpath.exists() and json.loads(mpath.read_text()) == manifest:
        return manifest
    w = spec.world
    train = scenes(spec.seed, "laion", spec.laion_images, w)
    align = scenes(spec.seed, "align", spec.align_images, w)
    seen = {s.signature() for s in train + align}
    held_out = scenes(spec.seed, "eval", spec.eval_images, w, exclude=seen)
    write_laion(out / "laion", train, spec.shard_size, w)
    write_align(out / "cc_sbu_align", align, w)
    write_eval(out / "eval", "test", held_out, w)
    mpath.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def laion_pattern(out: Path, spec: DataSpec) -> str:
    last = (spec.laion_images + spec.shard_size - 1) // spec.shard_size - 1
    return str(Path(out) / "laion" / f"{{00000..{last:05d}}}.tar")
