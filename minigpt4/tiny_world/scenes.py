"""Synthetic scenes of the tiny world: 1-3 coloured shapes on a plain background.

Everything is known: each object's colour, shape, size and position. Object centres sit on the ViT
patch grid (a small patch-16 ViT cannot learn shape otherwise), no two objects share colour and shape,
and objects are ordered left to right, which is the order the world's language names them in.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from PIL import Image, ImageDraw

COLOURS = {"red": (215, 40, 40), "green": (40, 165, 60), "blue": (45, 85, 225),
           "yellow": (235, 205, 30), "purple": (145, 60, 185), "orange": (245, 135, 20)}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
BACKGROUND = (215, 215, 215)


@dataclass(frozen=True)
class WorldSpec:
    """Image geometry. ``patch_size`` must be the vision tower's patch size (centres snap to its grid)."""
    image_size: int = 112
    patch_size: int = 16
    min_objects: int = 1
    max_objects: int = 2
    half_small: int = 10  # half extent in pixels
    half_large: int = 19

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    def half(self, size: str) -> int:
        return self.half_small if size == "small" else self.half_large


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str
    size: str
    col: int  # patch column of the centre (0 = left)
    row: int  # patch row of the centre (0 = top)

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]  # left to right

    def to_json(self) -> list[dict]:
        return [asdict(o) for o in self.objects]

    @classmethod
    def from_json(cls, objs: list[dict]) -> "Scene":
        return cls(tuple(Obj(**o) for o in objs))

    def signature(self) -> tuple:
        return tuple((o.colour, o.shape, o.size, o.col, o.row) for o in self.objects)


def centre(spec: WorldSpec, cell: int) -> int:
    return cell * spec.patch_size + spec.patch_size // 2


def _rows_that_fit(spec: WorldSpec, half: int) -> list[int]:
    return [r for r in range(spec.grid) if centre(spec, r) - half >= 1 and centre(spec, r) + half <= spec.image_size - 2]


def sample_scene(rng: random.Random, spec: WorldSpec) -> Scene:
    """One scene; the number of objects is uniform in [min_objects, max_objects]."""
    n = rng.randint(spec.min_objects, spec.max_objects)
    while True:  # rejection sampling over column layouts; terminates quickly for n <= 3
        kinds = rng.sample([(c, s) for c in COLOURS for s in SHAPES], n)
        sizes = [rng.choice(SIZES) for _ in range(n)]
        cols = sorted(rng.sample(range(spec.grid), n))
        halves = [spec.half(s) for s in sizes]
        if any(centre(spec, c) - h < 1 or centre(spec, c) + h > spec.image_size - 2 for c, h in zip(cols, halves)):
            continue
        if any(centre(spec, cols[i + 1]) - centre(spec, cols[i]) < halves[i] + halves[i + 1] + 3 for i in range(n - 1)):
            continue
        objs = tuple(Obj(k[0], k[1], sz, c, rng.choice(_rows_that_fit(spec, h)))
                     for k, sz, c, h in zip(kinds, sizes, cols, halves))
        return Scene(objs)


def render(scene: Scene, spec: WorldSpec) -> Image.Image:
    img = Image.new("RGB", (spec.image_size, spec.image_size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        cx, cy, h = centre(spec, o.col), centre(spec, o.row), spec.half(o.size)
        fill = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse((cx - h, cy - h, cx + h, cy + h), fill=fill)
        elif o.shape == "square":
            s = round(h * 0.85)  # similar area to the circle
            draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
        else:
            draw.polygon([(cx, cy - h), (cx - h, cy + h), (cx + h, cy + h)], fill=fill)
    return img
