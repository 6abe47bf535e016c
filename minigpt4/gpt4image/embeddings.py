"""The description-embedding file: one safetensors file keyed by image path.

Tensor ``embeddings`` [N, D] float32, L2-normalised, row i for ``keys[i]``. Metadata (strings):
``format`` (``minigpt4.gpt4image.embeddings``), ``keys`` and ``labels`` (JSON lists, same order; a label
is null for an unlabelled image), ``encoder`` (the encoder folder's name), ``kind`` (``clip`` or
``sentence-transformers``), ``dim``. The keys live in the safetensors header, which safetensors caps at
100 MB: ImageNet-1k train (1.28 M keys and labels) takes 67 MB of it.

    keys, embeddings, meta = load_embeddings("descriptions.safetensors", expected_dim=384)
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from minigpt4.errors import UserError

FORMAT = "minigpt4.gpt4image.embeddings"
TENSOR = "embeddings"


class EmbeddingsError(UserError, ValueError):
    """An embedding file that is missing, not ours, or does not fit; the message is one line."""


def save_embeddings(path: Path, keys: list[str], labels: list, embeddings, encoder: str, kind: str) -> None:
    """Write the file atomically (a temporary file renamed into place)."""
    from safetensors.torch import save_file

    if embeddings.ndim != 2 or embeddings.shape[0] != len(keys) or len(labels) != len(keys):
        raise ValueError(f"{len(keys)} keys, {len(labels)} labels and embeddings of shape "
                         f"{tuple(embeddings.shape)} do not match")
    meta = {"format": FORMAT, "keys": json.dumps(list(keys), ensure_ascii=False),
            "labels": json.dumps(list(labels), ensure_ascii=False), "encoder": str(encoder), "kind": str(kind),
            "dim": str(int(embeddings.shape[1]))}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({TENSOR: embeddings.float().contiguous()}, str(tmp), metadata=meta)
    os.replace(tmp, path)


def load_embeddings(path, expected_dim: int | None = None):
    """``(keys, embeddings [N, D] float32, meta)``; ``meta`` holds ``labels`` (a list), ``encoder``,
    ``kind`` and ``dim`` (an int). Raises :class:`EmbeddingsError` for a missing file, a file that is not
    an embedding file of this library, or one whose dimension is not ``expected_dim``."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.is_dir():
        raise EmbeddingsError(f"{path}: is a folder, not an embedding file (a .safetensors file of "
                              "python -m minigpt4.gpt4image.embed)")
    if not path.is_file():
        raise EmbeddingsError(f"{path}: no such embedding file (make it with python -m minigpt4.gpt4image.embed)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            names = set(f.keys())
            if meta.get("format") != FORMAT or TENSOR not in names:
                raise EmbeddingsError(f"{path}: not an embedding file of minigpt4.gpt4image.embed "
                                      f"(format {meta.get('format')!r}, tensors {sorted(names)[:3]})")
            embeddings = f.get_tensor(TENSOR)
    except SafetensorError as exc:
        raise EmbeddingsError(f"{path}: not a safetensors file ({exc})") from None
    try:
        keys, labels, dim = json.loads(meta["keys"]), json.loads(meta["labels"]), int(meta["dim"])
    except (KeyError, ValueError) as exc:
        raise EmbeddingsError(f"{path}: broken metadata ({type(exc).__name__}: {exc})") from None
    if embeddings.ndim != 2 or embeddings.shape != (len(keys), dim) or len(labels) != len(keys):
        raise EmbeddingsError(f"{path}: {len(keys)} keys / {len(labels)} labels / dim {dim} do not match the "
                              f"tensor {tuple(embeddings.shape)}")
    if not embeddings.is_floating_point() or not bool(embeddings.isfinite().all()):
        raise EmbeddingsError(f"{path}: the embeddings must be finite floats, got {embeddings.dtype}"
                              + ("" if not embeddings.is_floating_point() else " with NaN or infinite values"))
    if embeddings.shape[0] and not bool((embeddings.norm(dim=1) > 1e-6).all()):
        raise EmbeddingsError(f"{path}: {int((embeddings.norm(dim=1) <= 1e-6).sum())} embedding(s) are all zeros "
                              "(an embedding file of this library holds L2-normalised rows)")
    if not all(isinstance(k, str) for k in keys) or len(set(keys)) != len(keys):
        raise EmbeddingsError(f"{path}: the keys must be distinct image paths (text); "
                              f"{len(keys) - len(set(map(str, keys)))} repeat(s) or non-text key(s)")
    if expected_dim is not None and dim != int(expected_dim):
        raise EmbeddingsError(f"{path}: embeddings are {dim}-d ({meta.get('encoder')}, {meta.get('kind')}), "
                              f"expected {expected_dim}-d")
    info = {"labels": labels, "encoder": meta.get("encoder"), "kind": meta.get("kind"), "dim": dim}
    return keys, embeddings.float(), info
