"""The built tiny world's stage-2 model, for benchmarks that measure on it."""
from __future__ import annotations

from argparse import Namespace
from pathlib import Path


def load_stage2(tiny_world: Path):
    """``(cfg, model, vis_processor)`` of the stage-2 model in the tiny world built at ``tiny_world``, loaded
    through ``eval_configs/tiny_eval.yaml`` as the chat CLI loads it."""
    from minigpt4 import inference
    from minigpt4.common.shipped import config_file

    tiny_world = Path(tiny_world)
    if not (tiny_world / "report.json").exists():  # written when the build has finished
        raise SystemExit(f"--tiny-world {tiny_world}: no built tiny world there (build it with "
                         "python -m minigpt4.tiny_world, or point --tiny-world at one)")
    args = Namespace(cfg_path=str(config_file("eval_configs/tiny_eval.yaml")), options=[], device="cpu",
                     tiny_world=str(tiny_world), low_resource=False, load_in_4bit=False, device_map=None)
    cfg, model, vis, _ = inference.load_model(args)
    return cfg, model, vis
