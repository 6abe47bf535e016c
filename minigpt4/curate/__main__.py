"""Stage-2 data curation from the command line.

    python -m minigpt4.curate --config curate.yaml --cfg-path stage1_eval.yaml
    python -m minigpt4.curate --images photos/ --work-dir work --cfg-path stage1_eval.yaml --fixer rules
    python -m minigpt4.curate --config curate.yaml --stages apply-review,export --review-edits review_edits.jsonl

Stages: describe, fix, filter, review, apply-review, export (``--stages all``, the default, runs them all;
apply-review only when edits are given). Every stage writes its file in the work folder and skips what
is already there, so the same command resumes after an interruption. ``--options curate.KEY=VALUE``
sets curation keys; other ``--options`` go to the model config. Under ``torchrun`` the describe stage
is split over the processes and rank 0 runs the rest.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from minigpt4.common.tiny_world_paths import add_tiny_world_arg
from minigpt4.curate.config import STAGES
from minigpt4.errors import non_empty, user_errors

log = logging.getLogger("minigpt4.curate")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m minigpt4.curate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=non_empty, default=None,
                        help="YAML with a 'curate:' section (every key has a default)")
    parser.add_argument("--cfg-path", type=non_empty, default=None,
                        help="the stage-1 model config (needed by describe)")
    add_tiny_world_arg(parser)
    parser.add_argument("--options", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="curate.KEY=VALUE for the curation, other keys for the model config")
    parser.add_argument("--device", default=None, help="torch device for the stage-1 model (default: run.device)")
    parser.add_argument("--images", type=non_empty, default=None,
                        help="curate.images: a folder of images or a .tar shard pattern")
    parser.add_argument("--work-dir", type=non_empty, default=None,
                        help="curate.work_dir: where every stage writes its file")
    parser.add_argument("--num-images", type=int, default=None, help="curate.num_images: N drawn at random")
    parser.add_argument("--seed", type=int, default=None, help="curate.seed for drawing the N images")
    parser.add_argument("--fixer", default=None, choices=("rules", "openai", "hf", "none"), help="curate.fix.fixer")
    parser.add_argument("--export-out", type=non_empty, default=None,
                        help="curate.export.out (default: WORK_DIR/cc_sbu_align)")
    parser.add_argument("--stages", default="all", help=f"all, or a comma list of: {', '.join(STAGES)}")
    parser.add_argument("--review-edits", type=non_empty, default=None,
                        help="curate.review.edits: edited JSONL to apply")
    parser.add_argument("--retry-failed", action="store_true", help="ask the fixer again for rows that failed")
    parser.add_argument("--force", action="store_true", help="delete the selected stages' outputs and redo them")
    return parser.parse_args(argv)


def split_options(options: list[str]) -> tuple[list[str], list[str]]:
    curate = [o for o in options if o.startswith("curate.")]
    return curate, [o for o in options if not o.startswith("curate.")]


def run(args) -> dict:
    from minigpt4 import curate
    from minigpt4.common.dist import launcher_env

    with user_errors("minigpt4.curate"):
        curate_opts, model_opts = split_options(args.options)
        cfg = curate.load_config(args.config, curate_opts, images=args.images, work_dir=args.work_dir,
                                 num_images=args.num_images, seed=args.seed, fixer=args.fixer,
                                 export_out=args.export_out, review_edits=args.review_edits)
        model_args = {"cfg_path": args.cfg_path, "options": model_opts, "device": args.device,
                      "tiny_world": args.tiny_world}
        rank, world_size = 0, 1
        if (launcher_env() or (0, 1, 0))[1] > 1:
            from minigpt4.sharded_jsonl import launch_ranks

            info = launch_ranks(args.device)
            rank, world_size, model_args["device"] = info.rank, info.world_size, str(info.device)
        return curate.run(cfg, stages=args.stages, model_args=model_args, retry_failed=args.retry_failed,
                          force=args.force, rank=rank, world_size=world_size)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    result = run(parse_args(argv))
    if result["summary"]:
        print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
