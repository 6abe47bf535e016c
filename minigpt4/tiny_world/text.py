"""The tiny world's language: LAION-style captions, detailed descriptions from a fixed grammar, the
attribute header the language model learns to copy from, and a parser that checks every sentence of a
description against the grammar and extracts the attributes it states.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from minigpt4.tiny_world.scenes import COLOURS, SHAPES, SIZES, Obj, Scene

NUMBERS = {1: "one", 2: "two", 3: "three"}
SLOT_PHRASES = {1: ("It is",), 2: ("On the left is", "On the right is"),
                3: ("On the left is", "In the middle is", "On the right is")}


def caption(scene: Scene) -> str:
    """Short LAION-style caption, objects left to right: ``a red circle and a blue square``."""
    return " and ".join(f"a {o.name}" for o in scene.objects)


def header(scene: Scene) -> str:
    """What the language model copies from: ``objects: large red circle, small blue square.``"""
    return "objects: " + ", ".join(f"{o.size} {o.name}" for o in scene.objects) + "."


def description(scene: Scene) -> str:
    """Detailed description: count, one sentence per object, a size comparison for two objects."""
    objs = scene.objects
    n = len(objs)
    out = ["There is one shape." if n == 1 else f"There are {NUMBERS[n]} shapes."]
    out += [f"{phrase} a {o.size} {o.name}." for phrase, o in zip(SLOT_PHRASES[n], objs)]
    if n == 2:
        a, b = objs
        if a.size == b.size:
            out.append("The two shapes are the same size.")
        else:
            word = "bigger" if a.size == "large" else "smaller"
            out.append(f"The {a.name} is {word} than the {b.name}.")
    elif n == 3 and len({o.size for o in objs}) == 1:
        out.append("All three shapes are the same size.")
    return " ".join(out)


# --------------------------------------------------------------------------- parsing
_C = "|".join(COLOURS)
_S = "|".join(SHAPES)
_Z = "|".join(SIZES)
_OBJ = rf"a (?P<size>{_Z}) (?P<colour>{_C}) (?P<shape>{_S})"
_SENTENCES = [
    ("count", re.compile(r"There is (?P<n>one) shape\.")),
    ("count", re.compile(r"There are (?P<n>two|three) shapes\.")),
    ("object", re.compile(rf"(?P<slot>It is|On the left is|In the middle is|On the right is) {_OBJ}\.")),
    ("same", re.compile(r"(?:The two|All three) shapes are the same size\.")),
    ("compare", re.compile(rf"The (?P<c1>{_C}) (?P<s1>{_S}) is (?P<rel>bigger|smaller) than the "
                           rf"(?P<c2>{_C}) (?P<s2>{_S})\.")),
]
_CAPTION_OBJ = re.compile(rf"^an? ({_C}) ({_S})$")


@dataclass
class Parsed:
    """What a description states. ``bad`` lists sentences outside the grammar."""
    count: int | None = None
    objects: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # slot phrase -> (size, colour, shape)
    comparisons: list[tuple] = field(default_factory=list)
    same_size: bool = False
    sentences: list[str] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    duplicate_slots: int = 0


def split_sentences(text: str) -> list[str]:
    """Sentences ending in '.', plus any unterminated tail as a sentence of its own."""
    parts = re.findall(r"[^.]*\.|[^.]+$", text.strip())
    return [p.strip() for p in parts if p.strip()]


def parse_description(text: str) -> Parsed:
    p = Parsed(sentences=split_sentences(text))
    inverse_numbers = {v: k for k, v in NUMBERS.items()}
    for sentence in p.sentences:
        for kind, pattern in _SENTENCES:
            m = pattern.fullmatch(sentence)
            if m:
                break
        else:
            p.bad.append(sentence)
            continue
        if kind == "count":
            p.count = inverse_numbers[m["n"]]
        elif kind == "object":
            if m["slot"] in p.objects:
                p.duplicate_slots += 1
            p.objects[m["slot"]] = (m["size"], m["colour"], m["shape"])
        elif kind == "same":
            p.same_size = True
        else:
            p.comparisons.append((m["c1"], m["s1"], m["rel"], m["c2"], m["s2"]))
    return p


def description_matches(parsed: Parsed, scene: Scene) -> bool:
    """True when the description states the right count, every object (slot, size, colour, shape) and
    nothing false, i.e. it equals the ground truth's statements."""
    n = len(scene.objects)
    if parsed.bad or parsed.count != n or n not in SLOT_PHRASES:
        return False
    truth = {phrase: (o.size, o.colour, o.shape) for phrase, o in zip(SLOT_PHRASES[n], scene.objects)}
    if parsed.objects != truth:
        return False
    expected = parse_description(description(scene))
    return parsed.comparisons == expected.comparisons and parsed.same_size == expected.same_size


def scene_described(parsed: Parsed) -> Scene | None:
    """The objects a description states (slot order, sizes, colours, shapes), or None when its slots do
    not fit its count (a missing, extra or repeated slot)."""
    n = parsed.count
    if n not in SLOT_PHRASES or set(parsed.objects) != set(SLOT_PHRASES[n]) or parsed.duplicate_slots:
        return None
    return Scene(tuple(Obj(colour, shape, size, col=i, row=0)
                       for i, (size, colour, shape) in enumerate(parsed.objects[ph] for ph in SLOT_PHRASES[n])))


def is_coherent(text: str) -> bool:
    """True when ``text`` is, sentence for sentence, a description in the world's language of *some*
    possible scene: the count, one sentence per object in slot order, then the closing sentence that
    names the objects it described (for two objects: "the same size", or the left one "bigger"/"smaller"
    than the right one). Reads only the text, never the ground truth: a grammatical answer that compares
    objects it never described, compares an object with itself, or stops early is not coherent; one that
    merely misreads a size or a colour is (it is wrong, not malformed)."""
    parsed = parse_description(text)
    if parsed.bad:
        return False
    scene = scene_described(parsed)
    if scene is None:
        return False
    n, objs = len(scene.objects), scene.objects
    body = split_sentences(description(scene))[: 1 + n]
    closings = [[]]
    if n == 2:
        closings = [["The two shapes are the same size."]]
        if objs[0].name != objs[1].name:  # "the red square is bigger than the red square" means nothing
            closings += [[f"The {objs[0].name} is {rel} than the {objs[1].name}."] for rel in ("bigger", "smaller")]
    elif n == 3:
        closings = [[], ["All three shapes are the same size."]]
    return parsed.sentences[: 1 + n] == body and parsed.sentences[1 + n:] in closings


def description_attributes(parsed: Parsed, scene: Scene) -> dict[str, float]:
    """Per-attribute correctness (fraction of ground-truth objects whose attribute is stated correctly)."""
    n = len(scene.objects)
    stated = [parsed.objects.get(phrase) for phrase in SLOT_PHRASES.get(n, ())]
    out = {}
    for i, attr in enumerate(("size", "colour", "shape")):
        ok = [s is not None and s[i] == getattr(o, attr) for s, o in zip(stated, scene.objects)]
        out[attr] = sum(ok) / max(1, n)
    out["count"] = float(parsed.count == n)
    return out


def parse_caption(text: str) -> list[tuple[str, str]] | None:
    """``a red circle and a blue square`` -> [(red, circle), (blue, square)]; None when not a caption of
    the world (after the stage-1 text normalisation: lower case, no punctuation)."""
    text = re.sub(r"\s+", " ", text.strip().lower().rstrip("."))
    if not text:
        return None
    out = []
    for part in text.split(" and "):
        m = _CAPTION_OBJ.fullmatch(part.strip())
        if not m:
            return None
        out.append((m[1], m[2]))
    return out


def caption_correct(text: str, scene: Scene) -> bool:
    """Every object's colour and shape named, left to right, and nothing else."""
    return parse_caption(text) == [(o.colour, o.shape) for o in scene.objects]


# --------------------------------------------------------------------------- the stage-2 conversation
# The instructions of prompts/alignment.txt and the Vicuna-v0 training template (prompt_template).
INSTRUCTIONS = ("Describe this image in detail.", "Take a look at this image and describe what you notice.",
                "Please provide a detailed description of the picture.",
                "Could you describe the contents of this image for me?")
PROMPT_TEMPLATE = "###Human: {} ###Assistant: "
END_SYM = "###"


def conversation_prompt(instruction: str, image: str = "<ImageHere>") -> str:
    return PROMPT_TEMPLATE.format(f"<Img>{image}</Img> {instruction}")
