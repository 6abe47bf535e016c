"""The tiny world's frozen vision tower: the library's own :class:`~minigpt4.models.vision.VisionTower`
(Blip2VisionModel + Q-Former + query tokens) pretrained on the world's images with temporary heads, so
that each object's colour, shape, size and position can be read from the query outputs: the query tokens
are split into one group per slot (left to right), and every token of a group must tell, on its own and
through heads shared by all tokens, its slot's object (or that the slot is empty). Each image token then
carries one object, in the order the world's language names them, as each word of a text does. Saved in the
original file layouts (``eva_vit.pth`` + BLIP-2 ``.pth``) that ``vit_ckpt`` / ``q_former_model`` load.
"""
from __future__ import annotations

import io
import json
import logging
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from minigpt4.models.checkpoint import export_original
from minigpt4.models.vision import VisionTower, qformer_config, vision_config
from minigpt4.processors.blip_processors import Blip2ImageEvalProcessor
from minigpt4.tiny_world.scenes import COLOURS, SHAPES, SIZES, WorldSpec, render, sample_scene
from minigpt4.tiny_world.write import JPEG_QUALITY

log = logging.getLogger(__name__)
KINDS = [(c, s) for c in COLOURS for s in SHAPES]
GATED = ("colour", "shape", "size", "column")  # per slot; the multi-hot presence head is only reported


@dataclass(frozen=True)
class VisionSpec:
    seed: int = 0
    hidden_size: int = 96
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 384
    qformer_layers: int = 2
    num_query_token: int = 8
    batch_size: int = 64
    lr: float = 1e-3
    max_steps: int = 1200
    min_steps: int = 400
    eval_every: int = 200
    gate: float = 0.99  # colour, shape, size and column (per slot) this accurate on held-out images to stop early
    world: WorldSpec = field(default_factory=WorldSpec)

    def vit_config(self) -> dict:
        return {"hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
                "num_hidden_layers": self.num_layers, "num_attention_heads": self.num_heads,
                "patch_size": self.world.patch_size}

    def qformer_config(self) -> dict:
        return {"hidden_size": self.hidden_size, "num_hidden_layers": self.qformer_layers,
                "num_attention_heads": self.num_heads, "intermediate_size": self.intermediate_size,
                "cross_attention_frequency": 1}


def build_tower(spec: VisionSpec) -> VisionTower:
    vcfg = vision_config(spec.vit_config(), image_size=spec.world.image_size)
    return VisionTower(vcfg, qformer_config(spec.qformer_config(), vcfg.hidden_size), spec.num_query_token)


class Heads(nn.Module):
    """Temporary probes. Per query token, with weights shared by all tokens: the colour, shape, size and
    patch column of the object in the token's slot ('none' when the scene has fewer objects); token ``t``
    belongs to slot ``t * slots // num_tokens``. Plus multi-hot colour+shape presence on the flattened
    query outputs (only reported)."""

    LABELS = {"colour": len(COLOURS), "shape": len(SHAPES), "size": len(SIZES)}

    def __init__(self, hidden: int, tokens: int, slots: int, grid: int):
        super().__init__()
        if tokens < slots:
            raise ValueError(f"num_query_token ({tokens}) must be at least the number of slots ({slots})")
        self.slots, self.tokens = slots, tokens
        self.register_buffer("slot_of", torch.arange(tokens) * slots // tokens, persistent=False)
        self.sizes = dict(self.LABELS, column=grid)
        self.per_token = nn.ModuleDict({k: nn.Linear(hidden, n + 1) for k, n in self.sizes.items()})
        self.presence = nn.Linear(tokens * hidden, len(KINDS))

    def forward(self, feats):
        out = {k: head(feats) for k, head in self.per_token.items()}  # (batch, tokens, classes)
        out["presence"] = self.presence(feats.flatten(1))
        return out


def targets(scenes_, slots: int) -> dict[str, torch.Tensor]:
    vocab = {"colour": list(COLOURS), "shape": list(SHAPES), "size": list(SIZES)}
    t = {k: torch.full((len(scenes_), slots), len(v)) for k, v in vocab.items()}
    t["column"] = torch.full((len(scenes_), slots), -1)
    t["presence"] = torch.zeros(len(scenes_), len(KINDS))
    for i, s in enumerate(scenes_):
        for j, o in enumerate(s.objects):
            for k, v in vocab.items():
                t[k][i, j] = v.index(getattr(o, k))
            t["column"][i, j] = o.col
            t["presence"][i, KINDS.index((o.colour, o.shape))] = 1.0
    return t


class ImageStream:
    """Deterministic batches of (pixels, scenes): render -> JPEG (as written to disk) -> eval processor."""

    def __init__(self, seed, stream: str, world: WorldSpec):
        self.rng = random.Random(f"{seed}/{stream}")
        self.world = world
        self.proc = Blip2ImageEvalProcessor(image_size=world.image_size)

    def batch(self, n: int):
        scenes_ = [sample_scene(self.rng, self.world) for _ in range(n)]
        pixels = []
        for s in scenes_:
            buf = io.BytesIO()
            render(s, self.world).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
            pixels.append(self.proc(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
        return torch.stack(pixels), scenes_


class Batches(torch.utils.data.IterableDataset):
    """``count`` batches of an :class:`ImageStream`, in order; with one DataLoader worker they are rendered in
    another process while the tower trains (the same batches, sooner)."""

    def __init__(self, stream: ImageStream, size: int, count: int):
        self.stream, self.size, self.count = stream, size, count

    def __iter__(self):
        for _ in range(self.count):
            yield self.stream.batch(self.size)


def loss_and_accuracy(heads: Heads, feats: torch.Tensor, t: dict) -> tuple[torch.Tensor, dict]:
    """Loss and held-out accuracies; a per-slot accuracy counts a (image, slot) only when every token of
    the slot's group is right."""
    out = heads(feats)
    loss = F.binary_cross_entropy_with_logits(out["presence"], t["presence"])
    acc = {}
    for k in heads.sizes:
        target = t[k].clone()
        if k == "column":
            target[target < 0] = heads.sizes[k]
        target = target[:, heads.slot_of]  # (batch, tokens): each token's slot
        loss = loss + F.cross_entropy(out[k].flatten(0, 1), target.flatten())
        right = out[k].argmax(-1) == target
        acc[k] = torch.stack([right[:, heads.slot_of == j].all(1) for j in range(heads.slots)], 1).float().mean().item()
    acc["presence"] = ((out["presence"] > 0).float() == t["presence"]).all(1).float().mean().item()
    return loss, acc


def pretrain_vision(folder: Path, spec: VisionSpec, threads: int = 1, progress=None) -> dict:
    """Train tower + heads; write ``eva_vit.pth``, ``blip2_qformer.pth`` and ``pretraining.json``."""
    torch.set_num_threads(threads)
    torch.manual_seed(spec.seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tower = build_tower(spec)
    slots = spec.world.max_objects
    heads = Heads(spec.hidden_size, spec.num_query_token, slots, spec.world.grid)
    params = list(tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.05)
    train, held = ImageStream(spec.seed, "vision", spec.world), ImageStream(spec.seed, "vision-test", spec.world)
    test_pixels, test_scenes = held.batch(512)
    test_t = targets(test_scenes, slots)
    warm, history, step = 100, [], 0
    # its own generator: the loader's worker seed must not come from the global RNG, which the tower's dropout uses
    batches = torch.utils.data.DataLoader(Batches(train, spec.batch_size, spec.max_steps), batch_size=None,
                                          num_workers=1, prefetch_factor=4, generator=torch.Generator())
    for step, (pixels, sc) in enumerate(batches, start=1):
        tower.train()
        lr = spec.lr * min(1.0, step / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / spec.max_steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        loss, _ = loss_and_accuracy(heads, tower(pixels), targets(sc, slots))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if progress is not None:
            progress(step, loss.item())
        if step % spec.eval_every == 0 or step == spec.max_steps:
            tower.eval()
            with torch.no_grad():
                feats = torch.cat([tower(test_pixels[i:i + 128]) for i in range(0, len(test_pixels), 128)])
                _, acc = loss_and_accuracy(heads, feats, test_t)
            history.append({"step": step, "loss": loss.item(), **acc})
            log.info("vision step %d loss %.3f accuracy %s", step, loss.item(), acc)
            if step >= spec.min_steps and min(acc[k] for k in GATED) >= spec.gate:
                break
    tower.eval()
    export_original(tower, folder / "eva_vit.pth", folder / "blip2_qformer.pth", vit_dtype=torch.float32)
    report = {"steps": step, "history": history, "accuracy": history[-1] if history else None,
              "parameters": sum(p.numel() for p in tower.parameters()), "spec": asdict(spec)}
    (folder / "pretraining.json").write_text(json.dumps(report, indent=1))
    return report
