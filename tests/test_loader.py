"""The training loader: rank/worker splitting, mixing by sample_ratio, exact resume, align sharding."""
from __future__ import annotations

import io
import math
from collections import Counter

import pytest
import torch
from omegaconf import OmegaConf

import minigpt4  # noqa: F401
from minigpt4.common.registry import registry
from minigpt4.datasets import build_train_loader
from minigpt4.datasets.sources import epoch_batches
from tests.shard_utils import answer_for, write_align, write_shards

PROC = {"vis_processor": {"train": {"name": "blip2_image_train", "image_size": 24}},
        "text_processor": {"train": {"name": "blip_caption"}}}


def build(name, storage, **extra):
    cfg = OmegaConf.create({"data_type": "images", "build_info": {"storage": str(storage)}, **PROC, **extra})
    return registry.get_builder_class(name)(cfg).build_datasets()["train"]


def roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def assert_same_batches(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert x.keys() == y.keys()
        assert x["answer"] == y["answer"]
        assert torch.equal(x["image"], y["image"])
        if "image_id" in x:
            assert torch.equal(x["image_id"], y["image_id"])


def test_epoch_mode_two_ranks_two_workers_sees_every_sample_once(tmp_path):
    write_shards(tmp_path, 8, 7)
    ds = build("laion", tmp_path / "{00000..00007}.tar", resampled=False, shuffle_buffer=10)
    per_rank = []
    for rank in range(2):
        loader = build_train_loader({"laion": ds}, batch_size=4, num_workers=2, seed=5, rank=rank, world_size=2)
        seen = []
        while True:
            batch = next(loader)
            if loader.sources[0].epoch > 0:
                break
            seen += batch["answer"]
        loader.close()
        per_rank.append(seen)
    assert not set(per_rank[0]) & set(per_rank[1])
    everything = per_rank[0] + per_rank[1]
    assert len(everything) == 56
    assert sorted(everything) == sorted(answer_for(s, i) for s in range(8) for i in range(7))
    assert loader.skip_counts() == {}


def test_mixing_follows_sample_ratio(tmp_path):
    laion = build("laion", write_shards(tmp_path / "l", 2, 6)[0].parent / "*.tar")
    cc = build("cc_sbu", write_shards(tmp_path / "c", 1, 6, prefix="cc")[0].parent / "*.tar")
    laion.sample_ratio, cc.sample_ratio = 115, 14
    loader = build_train_loader({"laion": laion, "cc_sbu": cc}, batch_size=2, num_workers=0, seed=42)
    # statistics of the choice on many steps (no decoding needed) ...
    n = 20000
    frac = sum(loader.choose(t) == 1 for t in range(n)) / n
    p = 14 / 129
    assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / n)
    # ... and real batches: each whole batch comes from one dataset, in the chosen proportion
    sources = []
    before = torch.get_rng_state()  # processing in this process leaves the training RNG alone
    for t in range(300):
        batch = next(loader)
        kinds = {"cc" if " cc " in a else "photo" for a in batch["answer"]}
        assert len(kinds) == 1
        sources.append(kinds.pop())
        assert sources[-1] == ("cc" if loader.choose(t) == 1 else "photo")
    loader.close()
    assert torch.equal(torch.get_rng_state(), before)
    frac = sources.count("cc") / 300
    assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / 300)
    other = build_train_loader({"laion": laion, "cc_sbu": cc}, batch_size=2, num_workers=0, seed=42, rank=1,
                               world_size=2)
    assert [other.choose(t) for t in range(300)] != [loader.choose(t) for t in range(300)]


def _resume_check(datasets, *, total, cut, num_workers, seed=11, **kw):
    ref = build_train_loader(datasets, batch_size=3, num_workers=num_workers, seed=seed, **kw)
    batches = [next(ref) for _ in range(total)]
    ref_counts = ref.skip_counts()
    ref.close()

    first = build_train_loader(datasets, batch_size=3, num_workers=num_workers, seed=seed, **kw)
    head = [next(first) for _ in range(cut)]
    state = roundtrip(first.state_dict())
    first.close()  # the "killed" run
    assert_same_batches(head, batches[:cut])

    resumed = build_train_loader(datasets, batch_size=3, num_workers=num_workers, seed=seed, **kw)
    resumed.load_state_dict(state)
    tail = [next(resumed) for _ in range(total - cut)]
    assert_same_batches(tail, batches[cut:])
    assert resumed.skip_counts() == ref_counts
    resumed.close()
    return ref_counts


@pytest.mark.parametrize("resampled", [True, False])
def test_resume_webdataset_is_bitwise_identical(tmp_path, resampled):
    # 5 shards of 5 over 2 workers: in epoch mode one worker runs out first and epochs turn over
    write_shards(tmp_path, 5, 5, bad_images={(1, 1), (3, 2)}, no_caption={(4, 0)})
    ds = build("laion", tmp_path / "{00000..00004}.tar", resampled=resampled, shuffle_buffer=6)
    counts = _resume_check({"laion": ds}, total=22, cut=13, num_workers=2)
    assert counts and set(counts) <= {"bad_image", "missing_caption"}


def test_resume_mixed_map_and_webdataset(tmp_path):
    laion = build("laion", write_shards(tmp_path / "l", 3, 5)[0].parent / "*.tar", shuffle_buffer=4)
    align = build("cc_sbu_align", write_align(tmp_path / "a", 10, broken={4}))
    laion.sample_ratio, align.sample_ratio = 1, 1
    counts = _resume_check({"laion": laion, "cc_sbu_align": align}, total=16, cut=7, num_workers=1)
    assert counts.get("bad_image", 0) >= 1


def test_resume_with_other_world_size_or_workers_is_refused(tmp_path):
    ds = build("laion", write_shards(tmp_path, 2, 3)[0].parent / "*.tar")
    loader = build_train_loader({"laion": ds}, batch_size=2, num_workers=0, seed=1)
    next(loader)
    state = loader.state_dict()
    with pytest.raises(ValueError, match="world_size"):
        build_train_loader({"laion": ds}, batch_size=2, num_workers=0, seed=1, world_size=2).load_state_dict(state)
    with pytest.raises(ValueError, match="num_workers"):
        build_train_loader({"laion": ds}, batch_size=2, num_workers=2, seed=1).load_state_dict(state)


def test_align_ranks_split_like_distributed_sampler(tmp_path):
    ds = build("cc_sbu_align", write_align(tmp_path, 23))
    B = 3
    # the plan: union of rank batches at step t == the 1-process batch of size B*2 at step t
    for epoch in range(2):
        one = epoch_batches(23, 2 * B, 0, 1, 7, epoch)
        r0, r1 = (epoch_batches(23, B, r, 2, 7, epoch) for r in range(2))
        assert len(one) == len(r0) == len(r1) == 3
        for t in range(3):
            assert sorted(r0[t] + r1[t]) == sorted(one[t])
    assert epoch_batches(23, 2 * B, 0, 1, 7, 0) != epoch_batches(23, 2 * B, 0, 1, 7, 1)
    # and the loaders deliver exactly that, pixels included (augmentation seeded per sample)
    single = build_train_loader({"cc_sbu_align": ds}, batch_size=2 * B, num_workers=0, seed=7)
    ranks = [build_train_loader({"cc_sbu_align": ds}, batch_size=B, num_workers=1, seed=7, rank=r, world_size=2)
             for r in range(2)]
    for _ in range(4):  # crosses into epoch 1
        whole = next(single)
        parts = [next(loader) for loader in ranks]
        ids = torch.cat([p["image_id"] for p in parts])
        assert sorted(ids.tolist()) == sorted(whole["image_id"].tolist())
        images = torch.cat([p["image"] for p in parts])
        for i, image_id in enumerate(ids.tolist()):
            j = whole["image_id"].tolist().index(image_id)
            assert torch.equal(images[i], whole["image"][j])
    for loader in ranks + [single]:
        loader.close()


def test_align_epochs_cover_dataset(tmp_path):
    ds = build("cc_sbu_align", write_align(tmp_path, 12))
    loader = build_train_loader({"cc_sbu_align": ds}, batch_size=4, num_workers=0, seed=0)
    ids = Counter()
    for _ in range(6):  # two epochs of 3 batches
        ids.update(next(loader)["image_id"].tolist())
    assert ids == Counter({i: 2 for i in range(12)})


class _Plain(torch.utils.data.Dataset):
    """A map-style dataset without ``load``: random values from torch's global generator."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"x": torch.rand(2), "i": i}


def test_plain_map_dataset_is_seeded_per_sample():
    a = build_train_loader({"plain": _Plain()}, batch_size=4, num_workers=0, seed=3)
    b = build_train_loader({"plain": _Plain()}, batch_size=4, num_workers=1, seed=3)
    torch.manual_seed(123)  # the caller's RNG plays no part, and is left as it was
    before = torch.get_rng_state()
    for _ in range(3):
        x, y = next(a), next(b)
        assert torch.equal(x["x"], y["x"]) and torch.equal(x["i"], y["i"])
    assert torch.equal(torch.get_rng_state(), before)
    a.close(), b.close()
