"""Rank-split resumable JSONL: shares, part files, resume after a kill (also with another rank count), merge."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minigpt4.sharded_jsonl import JsonlOutput, ShardedJsonl, rank_share

ROOT = Path(__file__).resolve().parents[1]
KEYS = [f"class{i % 3}/img{i:03d}.jpg" for i in range(20)]


def rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def row(key, **extra):
    return {"key": key, "caption": f"text of {key}", **extra}


def test_rank_share_splits_every_item_exactly_once():
    for world in (1, 2, 3, 7, 25):
        shares = [rank_share(KEYS, r, world) for r in range(world)]
        assert sorted(k for s in shares for k in s) == sorted(KEYS)
        assert shares == [rank_share(KEYS, r, world) for r in range(world)]  # deterministic
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert rank_share(KEYS, 1, 2)[:2] == [KEYS[1], KEYS[3]]
    for rank, world in ((2, 2), (-1, 2), (0, 0)):
        with pytest.raises(ValueError, match="rank"):
            rank_share(KEYS, rank, world)


def test_single_process_writes_out_directly_and_resumes_after_a_cut_line(tmp_path):
    out = tmp_path / "sub" / "out.jsonl"
    first = ShardedJsonl(out)
    first.write([row(k) for k in KEYS[:5]])
    first.close()
    with open(out, "a") as f:
        f.write('{"key": "class0/img0')  # killed mid-line
    again = ShardedJsonl(out)
    assert again.done == set(KEYS[:5])
    assert out.read_text().endswith("\n")  # the cut line is gone from the file it appends to
    again.write([row(k) for k in KEYS[5:] if k not in again.done])
    assert again.merge(order=KEYS) == len(KEYS)
    assert [r["key"] for r in rows(out)] == KEYS
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.jsonl"]


def test_ranks_write_parts_and_a_rerun_with_another_rank_count_completes_once(tmp_path):
    out = tmp_path / "out.jsonl"
    # first run, 2 ranks, killed: rank 0 wrote 4 rows, rank 1 wrote 2 and half a line
    writers = [ShardedJsonl(out, r, 2) for r in range(2)]
    for r, w in enumerate(writers):
        w.write([row(k) for k in rank_share(KEYS, r, 2)[: 4 - 2 * r]])
        w.close()
    assert writers[1]._output.path.name == "out.jsonl.part-1-of-2"
    with open(tmp_path / "out.jsonl.part-1-of-2", "a") as f:
        f.write('{"key": "class1/img0')
    assert not out.exists()
    # rerun with 3 ranks: every rank sees the same done set, splits what is left
    writers = [ShardedJsonl(out, r, 3) for r in range(3)]
    done = set(rank_share(KEYS, 0, 2)[:4] + rank_share(KEYS, 1, 2)[:2])
    assert all(w.done == done for w in writers)
    left = [k for k in KEYS if k not in done]
    for r, w in enumerate(writers):
        w.write([row(k, rank=r) for k in rank_share(left, r, 3)])
        w.close()
    assert writers[0].merge(order=KEYS) == len(KEYS)
    merged = rows(out)
    assert [r["key"] for r in merged] == KEYS
    assert {r.get("rank") for r in merged} == {None, 0, 1, 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]
    # a third run finds everything done and the merge changes nothing
    text = out.read_text()
    final = ShardedJsonl(out, 1, 2)
    assert final.done == set(KEYS)
    final.close()
    assert final.merge(order=KEYS) == len(KEYS) and out.read_text() == text


def test_merge_keeps_one_row_per_key_and_rows_outside_the_listing(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("".join(json.dumps(row(k, run="old")) + "\n" for k in [KEYS[3], "gone.jpg"]))
    # a kill between the rename and the removal of the parts leaves duplicates; a stale temporary file too
    (tmp_path / "out.jsonl.merging").write_text("partial")
    part = tmp_path / "out.jsonl.part-0-of-2"
    part.write_text("".join(json.dumps(row(k, run="new")) + "\n" for k in KEYS[:5]))
    w = ShardedJsonl(out, 1, 2)
    assert w.done == set(KEYS[:5]) | {"gone.jpg"}
    w.close()
    assert w.merge(order=KEYS) == 6
    merged = rows(out)
    assert [r["key"] for r in merged] == KEYS[:5] + ["gone.jpg"]
    assert merged[3]["run"] == "old"  # the row already in out wins
    assert not part.exists() and not (tmp_path / "out.jsonl.merging").exists()


def test_merge_without_order_keeps_out_then_parts(tmp_path):
    out = tmp_path / "o.jsonl"
    for r in (1, 0):
        w = ShardedJsonl(out, r, 2)
        w.write([row(k) for k in rank_share(KEYS[:6], r, 2)])
        w.close()
    assert w.merge() == 6
    assert [r["key"] for r in rows(out)] == rank_share(KEYS[:6], 0, 2) + rank_share(KEYS[:6], 1, 2)


def test_a_file_that_is_not_keyed_rows_is_a_clear_error(tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text('{"key": "a"}\n{"caption": "no key"}\n')
    with pytest.raises(ValueError, match=r"o.jsonl:2: not a JSONL row with a \"key\""):
        ShardedJsonl(out, 0, 2)
    (tmp_path / "p.jsonl.part-0-of-2").write_text("not json\n")
    with pytest.raises(ValueError, match=r"p.jsonl.part-0-of-2:1"):
        JsonlOutput(tmp_path / "p.jsonl.part-0-of-2")


# the module is loaded from its file: it needs only the standard library, and the writers start fast
WRITER = """
import importlib.util, sys, time
from pathlib import Path
spec = importlib.util.spec_from_file_location("sharded_jsonl", sys.argv[5])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
ShardedJsonl, rank_share = mod.ShardedJsonl, mod.rank_share
out, rank, world, n = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
keys = [f"k{i:04d}" for i in range(n)]
w = ShardedJsonl(out, rank, world)
for key in [k for k in rank_share(keys, rank, world) if k not in w.done]:  # no barrier here: split all keys
    w.write([{"key": key, "pad": "x" * 2000}])
    time.sleep(0.002)
w.close()
"""


def test_sigkill_mid_write_then_rerun_gives_every_key_once(tmp_path):
    out, n = tmp_path / "o.jsonl", 400
    module = str(ROOT / "minigpt4" / "sharded_jsonl.py")
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(out), str(r), "2", str(n), module]) for r in range(2)]
    part = tmp_path / "o.jsonl.part-1-of-2"
    deadline = time.time() + 60
    while time.time() < deadline and (not part.exists() or part.stat().st_size < 40_000):
        time.sleep(0.01)
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
    probe = ShardedJsonl(out, 0, 1)
    probe.close()
    assert 0 < len(probe.done) < n
    resumed = [subprocess.Popen([sys.executable, "-c", WRITER, str(out), str(r), "3", str(n), module])
               for r in range(3)]
    assert all(p.wait(timeout=120) == 0 for p in resumed)
    final = ShardedJsonl(out, 0, 1)
    final.close()
    assert final.merge(order=[f"k{i:04d}" for i in range(n)]) == n
    assert [r["key"] for r in rows(out)] == [f"k{i:04d}" for i in range(n)]
