"""Captioning split over 2 torchrun ranks (gloo, CPU): kill the launcher mid-run, rerun, every image once."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minigpt4.testing.golden import draw_scene, write_config
from minigpt4 import caption
from tests.train_helpers import free_port, subprocess_env

pytestmark = pytest.mark.slow
N_IMAGES = 30


def rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def part_rows(folder: Path) -> int:
    """Complete rows in the part files (a row being written may be cut)."""
    return sum(p.read_bytes().count(b"\n") for p in folder.glob("out.jsonl.part-*"))


def torchrun(workdir, nproc, *extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
           str(free_port()), "-m", "minigpt4.caption", "--cfg-path", str(workdir / "fixture_eval.yaml"),
           "--images", str(workdir / "train"), "--labels", "dirs", "--prompt", "Describe this {label} in detail.",
           "--out", str(workdir / "out.jsonl"), "--max-new-tokens", "10", "--no-progress", *extra]
    return subprocess.Popen(cmd, cwd=workdir, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_two_ranks_killed_then_resumed_describe_every_image_once(tmp_path):
    root = tmp_path / "train"
    for i in range(N_IMAGES):
        folder = root / ("circle" if i % 2 else "square")
        folder.mkdir(parents=True, exist_ok=True)
        draw_scene(i).save(folder / f"{i:03d}.png")
    (root / "square" / "broken.png").write_text("not a picture")
    write_config(tmp_path)
    expected_keys = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))

    reference = tmp_path / "reference.jsonl"
    assert caption.main(["--cfg-path", str(tmp_path / "fixture_eval.yaml"), "--images", str(root), "--labels", "dirs",
                         "--prompt", "Describe this {label} in detail.", "--out", str(reference),
                         "--max-new-tokens", "10", "--no-progress", "--batch-size", "4"]) == 0

    launcher = torchrun(tmp_path, 2, "--batch-size", "1")
    deadline = time.time() + 240
    while time.time() < deadline and launcher.poll() is None and part_rows(tmp_path) < 6:
        time.sleep(0.05)
    assert launcher.poll() is None, launcher.communicate()
    launcher.send_signal(signal.SIGKILL)  # the launcher only: its workers must not go on writing
    launcher.communicate()
    time.sleep(2)
    before = part_rows(tmp_path)
    parts = sorted(p.name for p in tmp_path.glob("out.jsonl.part-*"))
    assert parts == ["out.jsonl.part-0-of-2", "out.jsonl.part-1-of-2"]
    assert 6 <= before < len(expected_keys) and not (tmp_path / "out.jsonl").exists()
    time.sleep(2)
    assert part_rows(tmp_path) == before  # nobody writes after the kill

    resumed = torchrun(tmp_path, 2, "--batch-size", "4")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert f"already done {before}" in out
    got = rows(tmp_path / "out.jsonl")
    assert [r["key"] for r in got] == expected_keys  # each image once, in the folder's order
    assert got == rows(reference)  # same rows as one process (batch 1/4 on 2 ranks == batch 4 on one)
    assert not list(tmp_path.glob("out.jsonl.part-*"))
    assert {r["label"] for r in got} == {"circle", "square"}


def test_two_ranks_split_webdataset_shards_and_merge_in_shard_order(tmp_path):
    import webdataset as wds

    keys = []
    for shard in range(3):
        with wds.TarWriter(str(tmp_path / f"part-{shard:03d}.tar")) as sink:
            for i in range(shard * 3, shard * 3 + 3 + (shard == 2)):
                path = tmp_path / f"{i}.png"
                draw_scene(i).save(path)
                sink.write({"__key__": f"s{i:05d}", "png": path.read_bytes()})
                keys.append(f"s{i:05d}")
    write_config(tmp_path)
    common = ["--cfg-path", str(tmp_path / "fixture_eval.yaml"), "--images", str(tmp_path / "part-{000..002}.tar"),
              "--max-new-tokens", "10", "--no-progress", "--batch-size", "2"]
    assert caption.main([*common, "--out", str(tmp_path / "one.jsonl")]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "minigpt4.caption", *common, "--out", str(tmp_path / "two.jsonl")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = rows(tmp_path / "two.jsonl")
    assert [r["key"] for r in got] == keys  # shards 0 and 2 on rank 0, shard 1 on rank 1, merged in shard order
    assert got == rows(tmp_path / "one.jsonl")
