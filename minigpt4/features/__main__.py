"""Vision-feature store from the command line.

    python -m minigpt4.features extract --cfg-path train_configs/tiny_stage2.yaml --out features/align
    torchrun --nproc-per-node 4 -m minigpt4.features extract --cfg-path CFG --out DIR

``extract`` runs every image of one dataset of the training config (``--dataset NAME`` when it has
several) through the frozen vision tower of its ``model`` section, with the dataset's
``vis_processor.train`` (which must be deterministic: blip2_image_eval, or blip2_image_train with
``deterministic: true``), and writes the outputs as shards keyed by sample. Under torchrun the samples
are split over the processes. Rerunning the same command after an interruption computes only what is
missing. Training then reads the store with ``--options datasets.NAME.feature_store=DIR``, and refuses
one made with another tower, processor or image size.
"""
from __future__ import annotations

import argparse
import logging
import sys

from minigpt4.common.tiny_world_paths import add_tiny_world_arg
from minigpt4.errors import non_empty

log = logging.getLogger("minigpt4.features")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m minigpt4.features", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="extract")
    ex = sub.add_parser("extract", help="write (or complete) a feature store for a dataset of a training config")
    ex.add_argument("--cfg-path", type=non_empty, required=True,
                    help="the training YAML (model and datasets sections)")
    ex.add_argument("--out", type=non_empty, required=True, metavar="DIR",
                    help="the store folder (new, or one to complete)")
    ex.add_argument("--dataset", default=None, metavar="NAME",
                    help="which datasets.NAME block (default: the only one in the config)")
    add_tiny_world_arg(ex)
    ex.add_argument("--options", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help="override config values")
    ex.add_argument("--batch-size", type=int, default=16, help="images per tower forward (default: 16)")
    ex.add_argument("--shard-size", type=int, default=1024, help="samples per shard file (default: 1024)")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.shard_size < 1:
        parser.error("--batch-size and --shard-size must be >= 1")
    return args


def extract_from_config(args) -> dict:
    import torch
    from omegaconf import OmegaConf

    from minigpt4.common import dist as D
    from minigpt4.common.config import Config, ConfigError
    from minigpt4.common.registry import registry
    from minigpt4.common.tiny_world_paths import set_tiny_world
    from minigpt4.features.extract import extract
    from minigpt4.models.minigpt4 import build_vision_tower, place_vision_tower

    set_tiny_world(args.tiny_world)
    cfg = Config.load(args.cfg_path, args.options)
    names = list(cfg.datasets_cfg or {})
    name = args.dataset or (names[0] if len(names) == 1 else None)
    if name not in names:
        raise ConfigError(f"--dataset: choose one of {names}" if name is None or names else
                          "--cfg-path: the config has no datasets section")
    run = OmegaConf.merge(cfg.run_cfg, {"distributed": D.launcher_env() is not None})
    if run.get("threads"):
        torch.set_num_threads(int(run.threads))
    info = D.init_distributed_mode(run)
    block = OmegaConf.masked_copy(cfg.datasets_cfg[name], [k for k in cfg.datasets_cfg[name] if k != "feature_store"])
    builder = registry.get_builder_class(name)(block)
    dataset = builder.build_datasets()["train"]
    vis, _ = builder.build_processors()
    tower = place_vision_tower(build_vision_tower(cfg.model_cfg), cfg.model_cfg, info.device).eval()
    tower.requires_grad_(False)
    counts = extract(tower, dataset, vis, OmegaConf.select(block, "vis_processor.train"), args.out,
                     batch_size=args.batch_size, shard_size=args.shard_size, rank=info.rank,
                     world_size=info.world_size, where=f"datasets.{name}.vis_processor.train")
    if info.is_main:
        log.info("feature store %s: %d written, %d already there, skipped: %s", args.out, counts["written"],
                 counts["reused"], counts["skipped"] or "none")
    return counts


def main(argv=None) -> int:
    args = parse_args(argv)
    from minigpt4.common import dist as D
    from minigpt4.common.logging import setup_logger
    from minigpt4.errors import UserError

    setup_logger((D.launcher_env() or (0,))[0])
    try:
        extract_from_config(args)
    except (UserError, FileNotFoundError, ValueError) as e:
        print(f"python -m minigpt4.features: error: {e}", file=sys.stderr)
        return 2
    finally:
        D.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
