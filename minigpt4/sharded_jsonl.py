"""Resumable JSONL output, written by one process or split over torchrun ranks.

Every row carries a ``"key"``. A run appends rows and fsyncs after each write, so a kill loses at most the
row being written; a partly written last line is dropped when the file is opened again, and the keys
already present are skipped by the next run.

With several ranks, rank ``r`` of ``w`` appends to its own part file next to the output
(``<out>.part-<r>-of-<w>``). When all ranks are done (after a barrier), rank 0 folds ``<out>`` and every
part file (whatever number of ranks wrote it) into ``<out>``: one row per key, in the order of the input
listing when given, written to a temporary file and renamed, then the parts are removed. A kill at any
point leaves rows either in the parts or in ``<out>``: the rerun (with any number of ranks) skips them.

    output = ShardedJsonl(Path("out.jsonl"), rank, world_size)
    barrier()  # every rank has read ``done`` before any rank writes, so all agree on what is left
    for key in rank_share([k for k in keys if k not in output.done], rank, world_size):
        output.write([{"key": key, ...}])
    output.finish(order=keys)   # close, barrier, merge on rank 0, barrier

Splitting what is left (rather than all keys) keeps the ranks balanced on a resume.
"""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
from pathlib import Path

from minigpt4.errors import InvalidFile, UsageError

log = logging.getLogger(__name__)


def rank_share(items: list, rank: int, world_size: int) -> list:
    """Items ``rank, rank + w, rank + 2w, ...`` of an ordered list: every item in exactly one share, and
    neighbouring items (often one class) spread over the ranks."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    return list(items[rank::world_size])


def _rows(path: Path, truncate: bool = False):
    """``(key, start, end)`` byte spans of the rows of ``path``, read line by line. A partly written last
    line is cut off the file when ``truncate`` (the file this process appends to), else only ignored."""
    rows, start, number = [], 0, 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                log.warning("%s: %s an unfinished last line (%d bytes) left by an interrupted run",
                            path, "dropping" if truncate else "ignoring", len(line))
                break
            end = start + len(line)
            if line.strip():
                try:
                    key = json.loads(line)["key"]
                    hash(key)
                except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
                    raise InvalidFile(f"{path}:{number}: not a JSONL row with a \"key\" ({type(exc).__name__}: "
                                      f"{exc}); use another output file or fix this one") from exc
                rows.append((key, start, end))
            start = end
    if truncate and start != path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(start)
    return rows


def drop_rows(out: Path, unwanted, what: str = "row(s)") -> int:
    """Remove the rows for which ``unwanted(row)`` is true from ``out`` and its part files (each file
    rewritten to a temporary file and renamed, under its lock), so the next run writes them again.
    Call on one rank before any rank opens the output. Returns the number of rows removed."""
    removed = 0
    for path in [out, *ShardedJsonl.parts_of(out)]:
        if not path.exists():
            continue
        with open(path, "rb") as lock:
            _lock(lock, path)
            kept, dropped = [], 0
            for key, start, end in _rows(path):
                lock.seek(start)
                line = lock.read(end - start)
                if unwanted(json.loads(line)):
                    dropped += 1
                else:
                    kept.append(line)
            if dropped:
                tmp = path.with_name(path.name + ".dropping")
                with open(tmp, "wb") as f:
                    f.writelines(kept)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
                _fsync_dir(path.parent)
                log.info("%s: %d %s removed to be made again", path, dropped, what)
                removed += dropped
    return removed


def _lock(file, path: Path) -> None:
    """An exclusive lock on an open file, held until it is closed (or the process dies): two runs never
    write one file at once."""
    try:
        import fcntl
    except ImportError:  # not on POSIX: no locking
        return
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.close()
        raise UsageError(f"{path}: another process is writing this file (a run still going?); "
                         "wait for it or stop it, then run again") from None


class JsonlOutput:
    """Append-only JSONL with the keys already written (``done``); fsync after every ``write``. The file
    is locked while open."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # a file name that is not UTF-8 (kept by Python as lone surrogates, e.g. "caf\udce9.jpg") is written as
        # the JSON escape \udce9: valid UTF-8, read back as the same string (os.fsencode gives the bytes)
        self.file = open(self.path, "a", encoding="utf-8", errors="backslashreplace")
        _lock(self.file, self.path)
        self.done: set = {key for key, _, _ in _rows(self.path, truncate=True)}

    def write(self, rows: list[dict]) -> None:
        for row in rows:
            self.file.write(json.dumps(row, ensure_ascii=False) + "\n")
            self.done.add(row["key"])
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()


class ShardedJsonl:
    """``out`` written by ``world_size`` ranks, each through its own part file (one process writes ``out``
    directly). ``done``: keys already in ``out`` or in any part file next to it."""

    def __init__(self, out: Path, rank: int = 0, world_size: int = 1):
        rank_share([], rank, world_size)  # validates rank / world_size
        self.out, self.rank, self.world_size = Path(out), rank, world_size
        self.out.parent.mkdir(parents=True, exist_ok=True)
        target = self.out if world_size == 1 else self.part_path(rank, world_size)
        self._output = JsonlOutput(target)
        self.done: set = set(self._output.done)
        for path in [self.out, *self.part_files()]:
            if path != target and path.exists():
                self.done.update(key for key, _, _ in _rows(path))

    def part_path(self, rank: int, world_size: int) -> Path:
        return self.out.with_name(f"{self.out.name}.part-{rank}-of-{world_size}")

    def part_files(self) -> list[Path]:
        return self.parts_of(self.out)

    @staticmethod
    def parts_of(out: Path) -> list[Path]:
        """Part files next to ``out``, by world size then rank."""
        out = Path(out)
        pattern = re.compile(re.escape(out.name) + r"\.part-(\d+)-of-(\d+)")
        found = []
        for path in out.parent.glob(f"{glob_escape(out.name)}.part-*-of-*"):
            m = pattern.fullmatch(path.name)
            if m:
                found.append(((int(m.group(2)), int(m.group(1))), path))
        return [path for _, path in sorted(found)]

    def write(self, rows: list[dict]) -> None:
        self._output.write(rows)
        self.done.update(row["key"] for row in rows)

    def close(self) -> None:
        self._output.close()

    def finish(self, order: list | None = None) -> int | None:
        """Close, wait for every rank, merge on rank 0, wait again. Returns the row count on rank 0."""
        from minigpt4.common import dist as D

        self.close()
        D.barrier()
        count = self.merge(order) if self.rank == 0 else None
        D.barrier()
        return count

    def merge(self, order: list | None = None) -> int:
        """Fold ``out`` and all part files into ``out`` (call on one rank after every rank closed): one row
        per key (the first one seen: ``out`` first, then parts), rows in ``order`` when given (keys not in
        it follow, as found), then remove the parts. Returns the number of rows in ``out``."""
        self.close()
        sources = [p for p in [self.out, *self.part_files()] if p.exists()]
        locks = []
        try:
            for path in sources:  # no rank (of this run or a stray one) is still writing
                locks.append(open(path, "rb"))
                _lock(locks[-1], path)
            return self._merge(sources, order)
        finally:
            for lock in locks:
                lock.close()

    def _merge(self, sources: list[Path], order) -> int:
        spans: dict = {}
        for path in sources:
            for key, start, end in _rows(path):
                spans.setdefault(key, (path, start, end))
        keys = list(spans)
        if order is not None:
            position = {key: i for i, key in enumerate(order)}
            extra = [k for k in keys if k not in position]
            if extra:
                log.warning("%s: %d row(s) are not in the input listing (e.g. %r); kept at the end",
                            self.out, len(extra), extra[0])
            keys = sorted((k for k in keys if k in position), key=position.__getitem__) + extra
        tmp = self.out.with_name(self.out.name + ".merging")
        readers = {path: open(path, "rb") for path in sources}
        try:
            with open(tmp, "wb") as f:
                for key in keys:
                    path, start, end = spans[key]
                    reader = readers[path]
                    reader.seek(start)
                    f.write(reader.read(end - start))
                f.flush()
                os.fsync(f.fileno())
        finally:
            for reader in readers.values():
                reader.close()
        os.replace(tmp, self.out)
        _fsync_dir(self.out.parent)
        for path in sources:
            if path != self.out:
                path.unlink()
        log.info("%s: %d row(s) merged from %d file(s)", self.out, len(keys), len(sources))
        return len(keys)


def launch_ranks(device: str | None = None):
    """Join the launcher's process group when torchrun (or SLURM) started several processes: gloo on CPU,
    NCCL on CUDA (``device`` None: CUDA when available; ``cuda`` becomes ``cuda:<LOCAL_RANK>``). A plain
    run is rank 0 of 1. Returns :class:`minigpt4.common.dist.DistInfo`."""
    from minigpt4.common import dist as D

    _exit_with_launcher()
    return D.init_distributed_mode({"distributed": True, "device": device})


def _exit_with_launcher() -> None:
    """Under torchrun on Linux, die with the launcher: a killed launcher otherwise leaves its workers
    writing while the rerun starts."""
    if sys.platform != "linux" or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the launcher is already gone
        os._exit(1)


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
