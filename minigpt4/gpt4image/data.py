"""An image-classification folder whose samples carry the embedding of their own description.

Layout: ``root/<class>/<file>`` (labels = sorted class folder names), or a list file (CSV with a header
``path,label`` or JSONL rows ``{"path", "label"}``, paths relative to ``root``), read exactly as the describe
step reads them (:mod:`minigpt4.image_lists`). A sample's key is its path
relative to ``root`` (posix), the key the describe and embed steps write; the embedding of a sample is
found BY KEY, never by position.

Problems found before any training, each a one-line error naming the config key: no image, an embedding file
that holds none of the images' keys (written for other images), a val class unknown to the training split.
An image without a description is skipped and counted (``missing_description: skip``, reason
``missing_description``) or an error (``missing_description: error``).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from minigpt4.images import open_image
from minigpt4.datasets import skips
from minigpt4.datasets.seeding import cpu_rng_scope
from minigpt4.errors import ConfigError, MissingFile

log = logging.getLogger(__name__)

MISSING_DESCRIPTION = "missing_description"
MISSING_POLICIES = ("skip", "error")


def scan_folder(root: Path, what: str) -> list[tuple[str, str]]:
    """(key, class name) of every image under ``root/<class>/`` (sorted by key), through the describe step's
    own listing so both steps agree on keys; its problems are prefixed with the config key ``what``."""
    from minigpt4.image_lists import class_folder_items

    if not Path(root).is_dir():
        raise MissingFile(f"{what}: {root} is not a folder (expected ROOT/<class>/<image>)")
    try:
        items, _ = class_folder_items(Path(root))
    except ValueError as e:
        raise ConfigError(f"{what}: {without_flags(e)}") from None
    return [(item.key, item.label) for item in items]


def read_list(path: Path, root: Path, what: str) -> list[tuple[str, str]]:
    """(key, class name) rows of a CSV (``path,label``) or JSONL (``{"path", "label"}``) list file whose paths
    are relative to (or inside) ``root``, through the describe step's own reader."""
    from minigpt4.image_lists import list_items

    try:
        return [(item.key, item.label) for item in list_items(Path(path), Path(root))]
    except (ValueError, FileNotFoundError) as e:
        raise type(e)(f"{what}: {without_flags(e)}") from None


def without_flags(exc: Exception) -> str:
    """The describe step's message with its command-line flags left out: here the config key names the input."""
    return str(exc).replace("--images ", "").replace("--list ", "")


def read_embeddings(path: Path, what: str) -> tuple[list[str], torch.Tensor, dict]:
    """(keys, [N, D] embeddings, metadata) of an embed-step file; its problems name the config key."""
    from minigpt4.gpt4image.embeddings import EmbeddingsError, load_embeddings

    try:
        return load_embeddings(path)
    except EmbeddingsError as e:
        raise ConfigError(f"{what}: {e}") from None


class DescribedImageFolder(torch.utils.data.Dataset):
    """Samples ``{"image", "label"[, "text_embedding"]}`` from ``(key, class name)`` rows under ``root``.

    ``embeddings``: (keys, tensor) or None (evaluation split). ``shuffle_descriptions``: the control in which
    every image gets ANOTHER image's embedding (a seeded derangement), to tell content from regularisation.
    """

    def __init__(self, root: Path, rows: list[tuple[str, str]], classes: list[str], transform, *, embeddings=None,
                 missing_description: str = "skip", shuffle_descriptions: bool = False, seed: int = 0,
                 name: str = "gpt4image_folder", what: str = "datasets.gpt4image_folder"):
        if missing_description not in MISSING_POLICIES:
            raise ConfigError(f"{what}.missing_description must be one of {list(MISSING_POLICIES)}, "
                              f"got {missing_description!r}")
        self.root, self.classes, self.transform, self.name = Path(root), list(classes), transform, name
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = sorted({c for _, c in rows if c not in index})
        if unknown:
            raise ConfigError(f"{what}: classes {unknown[:5]} of {self.root} are not among the training classes "
                              f"{self.classes[:10]}")
        self.build_skips: dict[str, int] = {}
        self.text_dim = None
        targets = None
        if embeddings is not None:
            keys, emb = embeddings
            row_of = {k: i for i, k in enumerate(keys)}
            found = [k in row_of for k, _ in rows]
            if not any(found):
                raise ConfigError(f"{what}.build_info.embeddings: none of the {len(rows)} images has an embedding "
                                  f"(the file is for other images: its first key is {keys[0]!r}, this split's first "
                                  f"image is {rows[0][0]!r})")
            missing = [k for (k, _), ok in zip(rows, found) if not ok]
            if missing and missing_description == "error":
                raise ConfigError(f"{what}: {len(missing)} image(s) have no description, e.g. {missing[0]!r} "
                                  f"(set {what}.missing_description: skip to train without them)")
            if missing:
                log.warning("%s: %d image(s) without a description are skipped, e.g. %s", name, len(missing),
                            missing[0])
                self.build_skips[MISSING_DESCRIPTION] = len(missing)
            rows = [r for r, ok in zip(rows, found) if ok]
            targets = emb[[row_of[k] for k, _ in rows]]
            if shuffle_descriptions:
                targets = targets[derangement(len(rows), seed)]
            self.text_dim = int(emb.shape[1])
        self.keys = [k for k, _ in rows]
        self.labels = [index[c] for _, c in rows]
        self.targets = targets

    def __len__(self) -> int:
        return len(self.keys)

    def load(self, i: int, seed: int | None = None) -> dict:
        path = self.root / self.keys[i]
        try:
            image = open_image(path)
        except (OSError, ValueError) as e:  # missing, unreadable or too large (UnreadableImage, ImageTooLarge)
            raise skips.SkipSample(skips.BAD_IMAGE, f"{path}: {e}") from None
        if seed is None:
            pixels = self.transform(image)
        else:
            with cpu_rng_scope(seed):
                pixels = self.transform(image)
        sample = {"image": pixels, "label": self.labels[i]}
        if self.targets is not None:
            sample["text_embedding"] = self.targets[i]
        return sample

    def __getitem__(self, i: int) -> dict:
        return self.load(i)


def derangement(n: int, seed: int) -> torch.Tensor:
    """A permutation with no fixed point (n >= 2): a random order, each position takes its successor's item."""
    if n < 2:
        return torch.arange(n)
    g = torch.Generator()
    g.manual_seed(seed)
    order = torch.randperm(n, generator=g)
    out = torch.empty(n, dtype=torch.long)
    out[order] = order.roll(-1)
    return out
