"""Stage-1 shape of a run through train.py: LAION-style and CC+SBU-style webdataset shards mixed by
sample_ratio, captions through blip_caption; stopped (run.max_seconds) and resumed, it ends bitwise equal
to an uninterrupted run."""
from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from tests.shard_utils import write_shards
from tests.train_helpers import train_config, train_in_process, write_config


def _config(tmp_path, out, **run):
    cfg = train_config(tmp_path, out, max_epoch=2, iters_per_epoch=2, batch_size_train=2, **run)
    vis = {"train": {"name": "blip2_image_train", "image_size": 224}}
    text = {"train": {"name": "blip_caption"}}
    cfg["datasets"] = {
        "laion": {"build_info": {"storage": str(tmp_path / "laion")}, "vis_processor": vis, "text_processor": text,
                  "sample_ratio": 3, "shuffle_buffer": 8},
        "cc_sbu": {"build_info": {"storage": str(tmp_path / "cc_sbu")}, "vis_processor": vis,
                   "text_processor": text, "sample_ratio": 1, "shuffle_buffer": 8}}
    return write_config(tmp_path / f"{out.name}.yaml", cfg)


def test_mixed_shards_stop_and_resume(tmp_path):
    write_shards(tmp_path / "laion", num_shards=2, per_shard=6, prefix="laion")
    write_shards(tmp_path / "cc_sbu", num_shards=2, per_shard=6, prefix="ccsbu", seed=1)
    assert train_in_process(["--cfg-path", str(_config(tmp_path, tmp_path / "full"))]) == 0
    part = _config(tmp_path, tmp_path / "part", max_seconds=0)
    assert train_in_process(["--cfg-path", str(part)]) == 0  # stops after the first step with a checkpoint
    state = torch.load(tmp_path / "part" / "job" / "resume.pt", weights_only=True)
    assert state["global_step"] == 1
    assert train_in_process(["--cfg-path", str(part), "--resume", "auto", "--options", "run.max_seconds=null"]) == 0
    a = load_file(str(tmp_path / "full" / "job" / "checkpoint_1.safetensors"))
    b = load_file(str(tmp_path / "part" / "job" / "checkpoint_1.safetensors"))
    for key in a:
        assert a[key].equal(b[key]), key
    epochs = [json.loads(line) for line in (tmp_path / "full" / "job" / "log.txt").read_text().splitlines()[1:]]
    assert [e["epoch"] for e in epochs] == [0, 1] and all(e["train_loss"] > 0 for e in epochs)
