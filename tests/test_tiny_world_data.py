"""The tiny world's scenes, language and files: deterministic, parseable, in the real loaders' formats."""
from __future__ import annotations

import hashlib
import json
import random
import tarfile
from dataclasses import replace

import pytest

from minigpt4.tiny_world import text as T
from minigpt4.tiny_world.scenes import Scene, WorldSpec, centre, render, sample_scene
from minigpt4.tiny_world.write import DataSpec, read_eval, write_world

SMALL = DataSpec(seed=3, laion_images=60, shard_size=25, align_images=10, eval_images=12)


def digest(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files(tmp_path):
    write_world(tmp_path / "a", SMALL)
    write_world(tmp_path / "b", SMALL)
    a, b = digest(tmp_path / "a"), digest(tmp_path / "b")
    assert a == b and len(a) == 3 + 10 + 1 + 12 + 1 + 1
    write_world(tmp_path / "c", replace(SMALL, seed=4))
    assert digest(tmp_path / "c") != a


def test_laion_shards_are_webdataset_samples(tmp_path):
    import webdataset as wds

    write_world(tmp_path, SMALL)
    shards = sorted((tmp_path / "laion").glob("*.tar"))
    assert [p.name for p in shards] == ["00000.tar", "00001.tar", "00002.tar"]
    with tarfile.open(shards[0]) as tar:
        names = tar.getnames()
        assert all(m.mtime == 0 for m in tar.getmembers())
    assert names[:3] == ["000000000.jpg", "000000000.txt", "000000000.json"]
    samples = list(wds.WebDataset([str(p) for p in shards], shardshuffle=False).decode("pil").to_tuple("jpg", "json"))
    assert len(samples) == 60
    image, meta = samples[0]
    assert image.size == (112, 112)
    scene = Scene.from_json(meta["objects"])
    assert meta["caption"] == T.caption(scene) and T.caption_correct(meta["caption"], scene)


def test_align_folder_and_heldout_split(tmp_path):
    write_world(tmp_path, SMALL)
    ann = json.loads((tmp_path / "cc_sbu_align" / "filter_cap.json").read_text())["annotations"]
    assert len(ann) == 10 and all((tmp_path / "cc_sbu_align" / "image" / f"{a['image_id']}.jpg").exists() for a in ann)
    assert all(not T.parse_description(a["caption"]).bad for a in ann)
    rows = read_eval(tmp_path / "eval" / "test.jsonl")
    assert len(rows) == 12 and all((tmp_path / "eval" / r["image"]).exists() for r in rows)
    train_signatures = set()
    import webdataset as wds

    for _, meta in wds.WebDataset(str(tmp_path / "laion" / "{00000..00002}.tar"), shardshuffle=False).decode().to_tuple("jpg", "json"):
        train_signatures.add(Scene.from_json(meta["objects"]).signature())
    assert not train_signatures & {r["scene"].signature() for r in rows}


@pytest.mark.parametrize("max_objects", [1, 2, 3])
def test_scenes_follow_the_rules(max_objects):
    spec = WorldSpec(max_objects=max_objects)
    rng = random.Random(0)
    for _ in range(300):
        s = sample_scene(rng, spec)
        assert 1 <= len(s.objects) <= max_objects
        assert [o.col for o in s.objects] == sorted({o.col for o in s.objects})  # left to right, distinct
        assert len({(o.colour, o.shape) for o in s.objects}) == len(s.objects)
        for o in s.objects:  # centre on the patch grid and the shape inside the image
            img = render(Scene((o,)), spec)
            assert img.getpixel((centre(spec, o.col), centre(spec, o.row))) != (215, 215, 215)
        d = T.description(s)
        parsed = T.parse_description(d)
        assert not parsed.bad and T.description_matches(parsed, s) and T.is_coherent(d)


def test_parser_rejects_fragments_and_wrong_facts():
    s = Scene.from_json([{"colour": "red", "shape": "circle", "size": "large", "col": 1, "row": 3},
                         {"colour": "blue", "shape": "square", "size": "small", "col": 5, "row": 2}])
    good = T.description(s)
    assert good == ("There are two shapes. On the left is a large red circle. On the right is a small blue square. "
                    "The red circle is bigger than the blue square.")
    assert T.parse_description("There square left is square.").bad == ["There square left is square."]
    assert T.parse_description("There are two shapes. On the left is a large red").bad == ["On the left is a large red"]
    wrong = good.replace("small blue", "large blue")
    assert not T.parse_description(wrong).bad and not T.description_matches(T.parse_description(wrong), s)
    assert not T.description_matches(T.parse_description("There are two shapes. On the left is a large red circle."), s)
    assert T.caption_correct("a red circle and a blue square", s)
    assert not T.caption_correct("a blue square and a red circle", s)
    assert not T.caption_correct("a red circle", s)
    assert T.parse_caption("a red circle and a") is None
