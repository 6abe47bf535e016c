"""The stage-2 set ``cc_sbu_align``: ``<storage>/filter_cap.json`` + ``<storage>/image/<image_id>.jpg``.

``filter_cap.json`` is ``{"annotations": [{"image_id": ..., "caption": ...}, ...]}``. Captions are
used raw (no text processor), as in the original. Entries whose image file is missing are reported
once at build time (count and first ids) and left out.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from torch.utils.data import Dataset

from minigpt4.datasets import skips
from minigpt4.datasets.seeding import cpu_rng_scope
from minigpt4.errors import InvalidFile, MissingFile
from minigpt4.images import DEFAULT_MAX_IMAGE_PIXELS, ImageTooLarge, UnreadableImage, open_image

log = logging.getLogger(__name__)

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
_SHOW_IDS = 5


def _find_image(image_dir: Path, image_id) -> Path | None:
    for suffix in _IMAGE_SUFFIXES:
        path = image_dir / f"{image_id}{suffix}"
        if path.is_file():
            return path
    return None


def read_annotations(storage: Path, dataset: str = "cc_sbu_align") -> list[dict]:
    key = f"datasets.{dataset}.build_info.storage"
    if not storage.is_dir():
        raise MissingFile(f"{key}: {str(storage)!r} is not a directory; it must hold filter_cap.json "
                          f"and image/ (see dataset/README_2_STAGE.md)")
    ann_path = storage / "filter_cap.json"
    if not ann_path.is_file():
        raise MissingFile(f"{key}: {str(ann_path)!r} does not exist (dataset {dataset!r}; "
                          f"see dataset/README_2_STAGE.md)")
    try:
        data = json.loads(ann_path.read_text(encoding="utf-8"))
    except ValueError as exn:
        raise InvalidFile(f"{ann_path}: not valid JSON ({exn})") from exn
    anns = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(anns, list):
        raise InvalidFile(f"{ann_path}: expected {{\"annotations\": [{{\"image_id\", \"caption\"}}, ...]}}")
    for i, ann in enumerate(anns):
        if not isinstance(ann, dict) or "image_id" not in ann or not isinstance(ann.get("caption"), str):
            raise InvalidFile(f"{ann_path}: annotation #{i} needs an image_id and a caption string, got {ann!r}")
    return anns


class CCSBUAlignDataset(Dataset):
    """Map-style: ``ds[i] -> {"image": FloatTensor[3,S,S], "answer": caption, "image_id": int}``.

    ``image_id`` is the running index of the annotation's image id, as in the original.
    """

    def __init__(self, storage: str | Path, vis_processor, text_processor=None, *, name: str = "cc_sbu_align",
                 max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS):
        self.name = name
        self.max_image_pixels = max_image_pixels
        self.sample_ratio = 1
        self.storage = Path(storage)
        self.vis_processor = vis_processor
        self.text_processor = text_processor  # kept for the builder interface; captions stay raw
        image_dir = self.storage / "image"
        anns, missing, empty = [], [], []
        for ann in read_annotations(self.storage, name):
            if not ann["caption"].strip():  # nothing to learn from; shards count the same as missing_caption
                empty.append(ann["image_id"])
                continue
            path = _find_image(image_dir, ann["image_id"])
            if path is None:
                missing.append(ann["image_id"])
            else:
                anns.append({"image_id": ann["image_id"], "caption": ann["caption"], "path": str(path)})
        self.build_skips = {k: n for k, n in ((skips.MISSING_IMAGE, len(missing)),
                                              (skips.MISSING_CAPTION, len(empty))) if n}
        if empty:
            log.warning("dataset %r: %d entries of %s have an empty caption (first: %s); skipping them", name,
                        len(empty), self.storage / "filter_cap.json", ", ".join(str(i) for i in empty[:_SHOW_IDS]))
        if missing:
            shown = ", ".join(str(i) for i in missing[:_SHOW_IDS])
            log.warning("dataset %r: %d of %d entries of %s have no image in %s (first: %s%s); skipping them",
                        name, len(missing), len(missing) + len(anns), self.storage / "filter_cap.json",
                        image_dir, shown, ", ..." if len(missing) > _SHOW_IDS else "")
        if not anns:
            raise MissingFile(f"dataset {name!r}: no usable annotation in {self.storage} "
                              f"(filter_cap.json entries need image/<image_id>.jpg)")
        running: dict = {}
        for ann in anns:
            ann["running_id"] = running.setdefault(ann["image_id"], len(running))
        self.annotations = anns

    def __len__(self) -> int:
        return len(self.annotations)

    def load(self, index: int, seed: int | None = None) -> dict:
        """The sample, or :class:`SkipSample` when its image cannot be read or is too large."""
        ann = self.annotations[index]
        store = getattr(self, "feature_store", None)
        if store is not None:  # the frozen tower's output, stored by minigpt4.features
            features = store.get(str(ann["image_id"]))
            if features is None:
                raise skips.SkipSample(skips.MISSING_IMAGE, f"{ann['path']}: not in the feature store {store.folder}")
            return {"image_features": features, "answer": ann["caption"], "image_id": ann["running_id"]}
        try:
            image = open_image(ann["path"], max_pixels=self.max_image_pixels)
        except FileNotFoundError as exn:
            raise skips.SkipSample(skips.MISSING_IMAGE, f"{ann['path']}: {exn!r}") from exn
        except ImageTooLarge as exn:
            raise skips.SkipSample(skips.IMAGE_TOO_LARGE, str(exn)) from exn
        except UnreadableImage as exn:
            raise skips.SkipSample(skips.BAD_IMAGE, str(exn)) from exn
        if seed is None:
            pixels = self.vis_processor(image)
        else:
            with cpu_rng_scope(seed):
                pixels = self.vis_processor(image)
        return {"image": pixels, "answer": ann["caption"], "image_id": ann["running_id"]}

    def __getitem__(self, index: int) -> dict:
        return self.load(index)
