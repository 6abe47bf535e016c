"""A classification split of the tiny world, drawn from its own scene generator.

Label: the shape of the LEFTMOST object (circle / square / triangle). The image determines it; a description
("There are two shapes. On the left is a large red circle. On the right is ...") carries more than the label
(colours, sizes, the other object). Training is deliberately small (``per_class`` images per class) and the
test split is held out (no scene of the test split repeats a training scene).

    root/train/<shape>/<nnnn>.png, root/test/<shape>/<nnnn>.png, root/scenes.jsonl (ground truth per key)
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from minigpt4.tiny_world.scenes import SHAPES, Scene, WorldSpec, render, sample_scene
from minigpt4.tiny_world.text import description


def label_of(scene: Scene) -> str:
    return scene.objects[0].shape  # objects are ordered left to right


def world_spec(tiny_world: Path) -> WorldSpec:
    """The scene geometry the tiny world was built with (its data manifest), so its MiniGPT-4 sees familiar
    images; the default spec if the manifest does not say."""
    manifest = Path(tiny_world) / "data" / "manifest.json"
    if manifest.is_file():
        world = json.loads(manifest.read_text()).get("spec", {}).get("world")
        if world:
            return WorldSpec(**world)
    return WorldSpec()


def draw_balanced(rng: random.Random, spec: WorldSpec, per_class: int, exclude: set) -> list[Scene]:
    """``per_class`` scenes of every label (rejection sampling), none whose signature is in ``exclude``."""
    counts = {s: 0 for s in SHAPES}
    out = []
    while min(counts.values()) < per_class:
        scene = sample_scene(rng, spec)
        label = label_of(scene)
        if counts[label] >= per_class or scene.signature() in exclude:
            continue
        exclude.add(scene.signature())
        counts[label] += 1
        out.append(scene)
    return out


def write_split(root: Path, spec: WorldSpec, *, train_per_class: int, test_per_class: int, seed: int = 0) -> dict:
    """Writes the two splits (PNG, lossless) and ``scenes.jsonl``; returns {split: number of images}."""
    rng = random.Random(f"gpt4image/{seed}")
    seen: set = set()
    rows, sizes = [], {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        scenes = draw_balanced(rng, spec, per_class, seen)
        index = {s: 0 for s in SHAPES}
        for scene in scenes:
            label = label_of(scene)
            key = f"{label}/{index[label]:04d}.png"
            index[label] += 1
            path = root / split / key
            path.parent.mkdir(parents=True, exist_ok=True)
            render(scene, spec).save(path)
            rows.append({"split": split, "key": key, "label": label, "scene": scene.to_json(),
                         "truth": description(scene)})
        sizes[split] = len(scenes)
    with open(root / "scenes.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return sizes
