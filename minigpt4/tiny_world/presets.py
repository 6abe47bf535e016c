"""Sizes and schedules of the tiny world: ``full`` (the documented run) and ``test`` (a shrunken run for
the test suite: smaller backbones, fewer steps, same code path)."""
from __future__ import annotations

from dataclasses import dataclass, field

from minigpt4.tiny_world.lm import LMSpec
from minigpt4.tiny_world.scenes import WorldSpec
from minigpt4.tiny_world.vision import VisionSpec
from minigpt4.tiny_world.write import DataSpec


@dataclass(frozen=True)
class Preset:
    name: str
    data: DataSpec
    vision: VisionSpec
    lm: LMSpec
    stage1: dict = field(default_factory=dict)  # --options for train.py (run.* schedule)
    stage2: dict = field(default_factory=dict)
    eval_images: int = 200
    review: bool = True  # the curation's manual pass, played by the world's grammar (see curation.py)
    curate_images: int | None = None  # stage-2 training images the stage-1 model describes (None: all)
    curate_batch: int = 50

    def __post_init__(self):
        if self.lm.image_tokens != self.vision.num_query_token:
            raise ValueError(f"preset {self.name}: lm.image_tokens ({self.lm.image_tokens}) must be the vision "
                             f"tower's num_query_token ({self.vision.num_query_token}): the language model learns "
                             "to read object lists laid out as the tower's query tokens")

    def stage2_batch(self) -> int:
        """Stage 2's global batch (the config's per-process batch for 2 processes, unless the preset sets it)."""
        from omegaconf import OmegaConf

        from minigpt4.common.shipped import config_file

        per_process = self.stage2.get("run.batch_size_train")
        if per_process is None:
            per_process = OmegaConf.load(config_file("train_configs/tiny_stage2.yaml")).run.batch_size_train
        return int(per_process) * 2

    def model_options(self) -> dict:
        """Model sizes for the train/eval configs (the YAMLs hold the ``full`` sizes)."""
        v = self.vision
        return {"model.image_size": v.world.image_size, "model.num_query_token": v.num_query_token,
                **{f"model.vit_config.{k}": x for k, x in v.vit_config().items()},
                **{f"model.qformer_config.{k}": x for k, x in v.qformer_config().items()}}


WORLD = WorldSpec()

FULL = Preset(
    name="full",
    data=DataSpec(seed=0, laion_images=8000, shard_size=1000, align_images=1000, eval_images=200, world=WORLD),
    vision=VisionSpec(seed=0, world=WORLD),
    lm=LMSpec(seed=0, world=WORLD),
    stage1={},  # the schedules of train_configs/tiny_stage{1,2}.yaml
    stage2={},
    eval_images=200,
)

TEST = Preset(
    name="test",
    data=DataSpec(seed=0, laion_images=1200, shard_size=300, align_images=120, eval_images=60, world=WORLD),
    vision=VisionSpec(seed=0, hidden_size=64, num_layers=2, intermediate_size=256, qformer_layers=1,
                      max_steps=400, min_steps=400, eval_every=200, world=WORLD),
    # text object lists only: with this 400-step tower (per-slot colour 0.74) a model that reads slot vectors
    # describes one object twice; the slot-vector path is the full run's and has its own tests
    lm=LMSpec(seed=0, hidden_size=96, num_layers=2, intermediate_size=256, max_steps=500, min_steps=500,
              eval_every=250, soft_header=0.0, world=WORLD),
    stage1={"run.max_epoch": 1, "run.iters_per_epoch": 200},
    stage2={"run.max_epoch": 1, "run.iters_per_epoch": 100, "run.batch_size_train": 8, "run.warmup_steps": 20},
    eval_images=60,
)

PRESETS = {p.name: p for p in (FULL, TEST)}
