"""Image-text pairs from webdataset shards as img2dataset writes them (``{key}.jpg`` + ``{key}.json``
with ``"caption"``, optional ``{key}.txt``): the LAION and CC/SBU datasets of stage 1.

One *stream* is what one DataLoader worker of one rank reads. Stages (webdataset's own pieces):

1. shard list: ``ResampledShards`` (``resampled: true``, the original's infinite sampling with
   replacement) or, in epoch mode, the shard list shuffled per epoch and split across ranks and then
   workers (each shard read by exactly one stream, one pass);
2. tar members via ``tar_file_iterator``, one shard at a time (gzip, bzip2 and xz compressed tars are
   recognised by their first bytes and decompressed), so a truncated or unreadable shard is counted once
   and its complete samples are kept; :func:`group_samples` forms the samples;
3. ``shuffle(shuffle_buffer)`` on the raw bytes;
4. numbering: sample ``i`` of the stream gets ``__index__ = i``; a resumed stream skips the first
   ``skip`` samples here, before any decoding;
5. checks (no member twice, image present, a caption that is UTF-8 text), the image opened with
   :func:`minigpt4.images.open_image` (at most ``max_image_pixels``, checked before decoding; any mode to
   RGB), the vis processor under a seed derived from the sample's place in the stream, the text processor.

Every dropped sample is counted in the stream's :class:`~minigpt4.datasets.skips.SkipCounter`.
"""
from __future__ import annotations

import bz2
import gzip
import json
import logging
import lzma
import random
from functools import partial
from itertools import islice

import webdataset as wds
from torch.utils.data import IterableDataset
from webdataset.tariterators import base_plus_ext, tar_file_iterator

from minigpt4.datasets import skips
from minigpt4.datasets.seeding import cpu_rng_scope, mix_seed
from minigpt4.errors import ConfigError
from minigpt4.images import DEFAULT_MAX_IMAGE_PIXELS, ImageTooLarge, UnreadableImage, open_image

log = logging.getLogger(__name__)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
_END_BLOCKS = 1024  # a complete tar ends with two 512-byte zero blocks
# A stream that drops this many raw samples in a row is broken, not unlucky.
MAX_DROPPED_IN_A_ROW = 100_000


class _TailReader:
    """File proxy remembering the last bytes read, to tell a complete tar from a truncated one."""

    def __init__(self, stream, url: str = ""):
        self.stream = stream
        self.url = url
        self.tail = b""

    def __str__(self):  # webdataset appends "@ <file object>" to tar errors
        return self.url

    def read(self, n=-1):
        data = self.stream.read(n)
        if data:
            self.tail = (self.tail + data)[-_END_BLOCKS:]
        return data

    def drain(self) -> None:
        while self.read(1 << 16):
            pass

    def ended_cleanly(self) -> bool:
        return len(self.tail) == _END_BLOCKS and not any(self.tail)


# first bytes of a compressed tar -> the reader that decompresses it
_COMPRESSED = ((b"\x1f\x8b", lambda f: gzip.GzipFile(fileobj=f, mode="rb")), (b"BZh", bz2.BZ2File),
               (b"\xfd7zXZ\x00", lzma.LZMAFile))


class _Prefixed:
    """A stream whose first bytes were read to recognise its format, served again before the rest."""

    def __init__(self, head: bytes, stream):
        self.head, self.stream = head, stream

    def read(self, n=-1):
        if not self.head:
            return self.stream.read(n)
        if n is None or n < 0:
            data, self.head = self.head + self.stream.read(), b""
            return data
        data, self.head = self.head[:n], self.head[n:]
        return data + (self.stream.read(n - len(data)) if len(data) < n else b"")


def _tar_stream(stream):
    """The uncompressed tar bytes of ``stream`` (a plain tar is passed through)."""
    head = b""
    while len(head) < 6:
        more = stream.read(6 - len(head))
        if not more:
            break
        head += more
    prefixed = _Prefixed(head, stream)
    for magic, opener in _COMPRESSED:
        if head.startswith(magic):
            return opener(prefixed)
    return prefixed


def tar_members(shards, counter: skips.SkipCounter, max_failures_in_a_row: int | None = None):
    """``{"url": ...}`` dicts -> tar member dicts, with the ``{}`` end-of-shard marker after each shard.

    ``max_failures_in_a_row`` bounds an endless (resampled) stream whose shards all fail to open,
    which would otherwise spin forever without yielding.
    """
    failures = 0
    for shard in shards:
        url = shard["url"]
        try:
            stream = wds.gopen(url)
            failures = 0
        except Exception as exn:  # noqa: BLE001  (any open failure is a counted skip)
            counter.add(skips.UNREADABLE_SHARD, f"{url}: {exn!r}")
            failures += 1
            if max_failures_in_a_row is not None and failures >= max_failures_in_a_row:
                raise RuntimeError(f"{counter.name}: {failures} shards in a row could not be opened "
                                   f"(last: {url}: {exn!r})") from exn
            continue
        members = 0
        try:
            reader = _TailReader(_tar_stream(stream), url)  # the end-of-archive check sees uncompressed bytes
            for member in tar_file_iterator(reader):
                member["__url__"] = url
                members += 1
                yield member
            reader.drain()
            if not reader.ended_cleanly():
                counter.add(skips.TRUNCATED_SHARD, f"{url}: no end-of-archive marker after {members} files")
        except Exception as exn:  # noqa: BLE001
            reason = skips.TRUNCATED_SHARD if members else skips.UNREADABLE_SHARD
            counter.add(reason, f"{url}: {exn} (after {members} files)")
        finally:
            try:
                stream.close()
            except Exception as exn:  # noqa: BLE001  (e.g. a pipe: command's exit status; data already counted)
                log.debug("%s: closing %s: %r", counter.name, url, exn)
        yield {}


def group_samples(members):
    """Tar members -> samples (``{"__key__", "__url__", ext: bytes}``), consecutive members with the same
    key forming one sample, as webdataset's ``group_by_keys``; a sample that holds a member twice gets
    ``__duplicates__`` (its extensions) and is dropped with a count by :func:`check_samples` (which of two
    copies is right cannot be known)."""
    current = None
    for member in members:
        if not member:  # end of a shard: a sample never spans two shards
            if current is not None:
                yield current
            current = None
            continue
        key, ext = base_plus_ext(member["fname"])
        if key is None:
            continue
        ext = ext.lower()
        if current is None or key != current["__key__"]:
            if current is not None:
                yield current
            current = {"__key__": key, "__url__": member["__url__"]}
        if ext in current:
            current.setdefault("__duplicates__", []).append(ext)
        else:
            current[ext] = member["data"]
    if current is not None:
        yield current


def split_streams(src, rank: int, world_size: int, worker: int, num_workers: int):
    """Every ``world_size``-th item for this rank, then every ``num_workers``-th for this worker
    (webdataset's ``split_by_node`` + ``split_by_worker``, with explicit ranks)."""
    return islice(islice(src, rank, None, world_size), worker, None, num_workers)


def number_samples(src, skip: int, counter: skips.SkipCounter):
    """Attach ``__index__``; drop the first ``skip`` samples undecoded with the counter muted
    (their skips were counted before the state was saved)."""
    counter.muted = skip > 0
    counter.last_good = skip - 1
    for index, sample in enumerate(src):
        if index < skip:
            if index == skip - 1:
                counter.muted = False
            continue
        if index - counter.last_good > MAX_DROPPED_IN_A_ROW:
            raise RuntimeError(f"dataset {counter.name!r}: {index - counter.last_good - 1} samples in a row were "
                               f"skipped ({skips.format_counts(counter.pending)}); is the data usable at all?")
        sample["__index__"] = index
        yield sample
    counter.muted = False


def caption_of(sample: dict) -> str:
    """``json["caption"]``, else the ``.txt`` text (UTF-8, BOM allowed). Raises :class:`SkipSample`
    (``missing_caption``, or ``bad_caption`` for text that is not UTF-8: it is never decoded with a guess)."""
    raw, problem = sample.get("json"), None
    if raw is not None:
        try:
            meta = json.loads(raw) if isinstance(raw, (bytes, str)) else raw
        except UnicodeDecodeError as exn:
            meta, problem = None, f".json is not UTF-8 ({exn.reason} at byte {exn.start})"
        except ValueError:
            meta = None
        caption = meta.get("caption") if isinstance(meta, dict) else None
        if isinstance(caption, str) and caption.strip():
            return caption
    text = sample.get("txt")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exn:
            text, problem = None, f".txt is not UTF-8 ({exn.reason} at byte {exn.start})"
    if isinstance(text, str) and text.strip():
        return text
    if problem is not None:
        raise skips.SkipSample(skips.BAD_CAPTION, problem)
    raise skips.SkipSample(skips.MISSING_CAPTION)


def check_samples(src, counter: skips.SkipCounter):
    for sample in src:
        where = f"{sample.get('__url__')}:{sample.get('__key__')}"
        if sample.get("__duplicates__"):
            counter.add(skips.BAD_SAMPLE, f"{where}: more than one member named "
                                          f"{', '.join(sorted(set(sample['__duplicates__'])))}")
            continue
        image_key = next((k for k in IMAGE_KEYS if k in sample), None)
        if image_key is None:
            counter.add(skips.MISSING_IMAGE, where)
            continue
        try:
            caption = caption_of(sample)
        except skips.SkipSample as exn:
            counter.add(exn.reason, f"{where}: {exn.detail}" if exn.detail else where)
            continue
        yield {"__index__": sample["__index__"], "__key__": sample.get("__key__"),
               "__url__": sample.get("__url__"), "__caption__": caption, image_key: sample[image_key]}


def decode_images(src, max_pixels: int | None, counter: skips.SkipCounter):
    for sample in src:
        key = next(k for k in IMAGE_KEYS if k in sample)
        where = f"{sample['__url__']}:{sample['__key__']}.{key}"
        try:
            sample[key] = open_image(sample[key], max_pixels=max_pixels, where=where)
        except ImageTooLarge as exn:
            counter.add(skips.IMAGE_TOO_LARGE, str(exn))
            continue
        except UnreadableImage as exn:
            counter.add(skips.BAD_IMAGE, str(exn))
            continue
        yield sample


def process_samples(src, vis_processor, text_processor, stream_seed: int, counter: skips.SkipCounter):
    for sample in src:
        image = next(sample[k] for k in IMAGE_KEYS if k in sample)
        try:
            with cpu_rng_scope(mix_seed(stream_seed, sample["__index__"])):
                pixels = vis_processor(image)
        except Exception as exn:  # noqa: BLE001
            counter.add(skips.BAD_IMAGE, f"{sample['__url__']}:{sample['__key__']}: {exn!r}")
            continue
        counter.last_good = sample["__index__"]
        caption = sample["__caption__"]
        answer = text_processor(caption) if text_processor is not None else caption
        yield sample["__index__"], {"image": pixels, "answer": answer}


def store_key(url: str, key: str) -> str:
    """A sample's key in a feature store: ``<shard file name>/<sample key>``."""
    return f"{url.rsplit('/', 1)[-1]}/{key}"


def stored_features(src, store, text_processor, counter: skips.SkipCounter):
    """``image_features`` from a :class:`~minigpt4.features.store.FeatureStore` keyed ``<shard>/<key>``;
    a sample the extraction left out (unreadable image) is counted as it was there."""
    for sample in src:
        features = store.get(store_key(sample["__url__"], sample["__key__"]))
        if features is None:
            counter.add(skips.BAD_IMAGE, f"{sample['__url__']}:{sample['__key__']}: not in the feature store")
            continue
        counter.last_good = sample["__index__"]
        caption = sample["__caption__"]
        answer = text_processor(caption) if text_processor is not None else caption
        yield sample["__index__"], {"image_features": features, "answer": answer}


def _constant(value):
    return value


class WebImageTextDataset(IterableDataset):
    """LAION / CC+SBU style webdataset: yields ``{"image": FloatTensor[3,S,S], "answer": str}``.

    Iterating it directly splits shards by ``torch.distributed`` rank and DataLoader worker as
    webdataset does; :func:`minigpt4.datasets.loader.build_train_loader` drives :meth:`stream`
    instead, with explicit ranks, exact skip counts and resumable positions.
    """

    def __init__(self, urls: list[str], vis_processor, text_processor=None, *, name: str = "webdataset",
                 resampled: bool = True, shuffle_buffer: int = 1000, seed: int = 0,
                 max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS):
        super().__init__()
        if not urls:
            raise ConfigError(f"dataset {name!r}: no shards")
        self.urls = list(urls)
        self.vis_processor = vis_processor
        self.text_processor = text_processor
        self.name = name
        self.sample_ratio = 1
        self.resampled = bool(resampled)
        self.shuffle_buffer = int(shuffle_buffer)
        self.max_image_pixels = max_image_pixels
        self.seed = seed
        self.epoch = 0
        self.counter = skips.SkipCounter(name)  # used by direct iteration only

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard_source(self, rank: int, world_size: int, worker: int, num_workers: int, epoch: int, seed: int):
        if self.resampled:
            stream_seed = mix_seed(seed, rank, worker, epoch, 1)
            return wds.ResampledShards(self.urls, seed=0, deterministic=True,
                                       worker_seed=partial(_constant, stream_seed))
        order = [s["url"] for s in wds.SimpleShardList(self.urls, seed=mix_seed(seed, epoch, 2))]
        mine = list(split_streams(order, rank, world_size, worker, num_workers))
        return wds.SimpleShardList(mine) if mine else partial(iter, ())

    def stream(self, *, rank: int = 0, world_size: int = 1, worker: int = 0, num_workers: int = 1,
               epoch: int = 0, seed: int | None = None, skip: int = 0, counter: skips.SkipCounter | None = None):
        """``(index, sample)`` pairs of one stream; ``index`` counts raw samples (bad ones too)."""
        seed = self.seed if seed is None else seed
        counter = counter if counter is not None else self.counter
        stream_seed = mix_seed(seed, rank, worker, epoch)
        stages = [
            self.shard_source(rank, world_size, worker, num_workers, epoch, seed),
            partial(tar_members, counter=counter, max_failures_in_a_row=100 if self.resampled else None),
            group_samples,
        ]
        if self.shuffle_buffer > 1:
            rng = random.Random(mix_seed(stream_seed, 3))
            stages.append(wds.shuffle(self.shuffle_buffer, initial=min(100, self.shuffle_buffer), rng=rng))
        stages += [partial(number_samples, skip=skip, counter=counter), partial(check_samples, counter=counter)]
        if getattr(self, "feature_store", None) is not None:  # stored tower outputs instead of pixels
            stages.append(partial(stored_features, store=self.feature_store, text_processor=self.text_processor,
                                  counter=counter))
        else:
            stages += [
                partial(decode_images, max_pixels=self.max_image_pixels, counter=counter),
                partial(process_samples, vis_processor=self.vis_processor, text_processor=self.text_processor,
                        stream_seed=stream_seed, counter=counter),
            ]
        return iter(wds.DataPipeline(*stages))

    def __iter__(self):
        rank, world_size, worker, num_workers = wds.utils.pytorch_worker_info()
        for _, sample in self.stream(rank=rank, world_size=world_size, worker=worker,
                                     num_workers=num_workers, epoch=self.epoch):
            yield sample
