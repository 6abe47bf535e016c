"""Train MiniGPT-4 (stage 1 alignment or stage 2 fine-tuning).

    python train.py --cfg-path train_configs/minigpt4_stage1_pretrain.yaml [--options k=v ...] [--resume auto|PATH]
    torchrun --nproc-per-node N train.py --cfg-path ...
    minigpt4-train --cfg-path ...                       # the same, installed (or: torchrun ... -m minigpt4.train)

Config -> distributed init -> seeds (seed + rank) -> task -> datasets -> model -> runner, as the original.
Exit codes: 0 done (or stopped by ``run.max_seconds``, with a checkpoint); 2 bad input (unknown key, missing
file, mismatched checkpoint, unwritable output folder: a one-line error before any model is loaded) or a
checkpoint that could not be written; 3 a NaN/inf loss; 128 + the signal number (143 for SIGTERM, 130 for
SIGINT) after a stop signal was honoured with a checkpoint, so a job script can requeue on it.
Arguments are parsed before torch is imported, so --help and usage errors are instant.
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import sys

from minigpt4.common.tiny_world_paths import add_tiny_world_arg
from minigpt4.errors import ConfigError, UserError, non_empty, run_cli

log = logging.getLogger("train")

EXAMPLES = """examples:
  # 4 processes on one machine (one per GPU, or CPU processes with run.device=cpu)
  torchrun --nproc-per-node 4 train.py --cfg-path train_configs/minigpt4_stage1_pretrain.yaml
  # stage 2 from a stage-1 checkpoint
  torchrun --nproc-per-node 1 train.py --cfg-path train_configs/minigpt4_stage2_finetune.yaml \\
      --options model.ckpt=output/minigpt4_stage1_pretrain/<job>/checkpoint_3.safetensors
  # the tiny world's stage 1 on 2 CPU processes, with the tiny world built in DIR
  torchrun --nproc-per-node 2 train.py --cfg-path train_configs/tiny_stage1.yaml --tiny-world DIR \\
      --options run.output_dir=my_runs/stage1
  # continue the newest run under run.output_dir where it stopped
  torchrun --nproc-per-node 4 train.py --cfg-path train_configs/minigpt4_stage1_pretrain.yaml --resume auto

exit status: 0 done (or stopped by run.max_seconds, with a checkpoint), 2 bad input or a checkpoint that could
not be written, 3 the loss became NaN/inf, 128 + the signal number (143 SIGTERM, 130 Ctrl-C) after a stop
signal was honoured with a checkpoint.
"""


def parse_args(argv=None, prog: str = "train.py"):
    p = argparse.ArgumentParser(prog=prog, description="Train MiniGPT-4 (stage 1 or stage 2) from a YAML "
                                "config, under torchrun or as a single process.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg-path", type=non_empty, required=True,
                   help="the training YAML, e.g. train_configs/minigpt4_stage1_pretrain.yaml or "
                        "train_configs/tiny_stage1.yaml")
    add_tiny_world_arg(p)
    p.add_argument("--options", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config values: key=value ... (e.g. run.max_epoch=1 run.device=cpu; default: none)")
    p.add_argument("--resume", type=non_empty, default=None, metavar="auto|PATH",
                   help="continue a run: 'auto' = the latest resume file under run.output_dir, or a resume "
                        "file / job folder (same as run.resume_ckpt_path; default: a new run)")
    p.add_argument("--allow-fresh", action="store_true",
                   help="with --resume auto: start a new run when run.output_dir holds runs but no usable resume "
                        "file (refused otherwise)")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in a job folder that already holds one (its resume file and checkpoints "
                        "are replaced; refused otherwise)")
    return p.parse_args(argv)


def setup_seeds(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def resolve_resume(run, flag: str | None, allow_fresh: bool = False):
    """``--resume`` (or ``run.resume_ckpt_path``) -> a resume file path, or None for a fresh run.

    ``auto`` takes the newest resume file under ``run.output_dir``; with none at all it starts a new run.
    A newest resume file that is unusable, or job folders that hold a run but no resume file, are refused
    (the run would silently start over) unless ``allow_fresh``, which starts a new run with a warning.
    """
    from minigpt4.runners import checkpointing as C
    from minigpt4.runners.output import runs_without_resume

    if allow_fresh and flag != "auto":
        raise ConfigError("--allow-fresh only applies to --resume auto")
    if flag != "auto":
        target = flag or run.get("resume_ckpt_path")
        return C.find_resume(target) if target else None
    out_dir = run.get("output_dir", "output")
    found = C.find_latest(out_dir)
    if found is not None:
        try:
            C.load_resume(found)
            return found
        except UserError as e:
            problem = f"--resume auto: the newest resume file is unusable: {e}"
    else:
        orphans = runs_without_resume(out_dir)
        if not orphans:
            log.info("--resume auto: no run under %s yet, starting a new run", out_dir)
            return None
        folder, traces = orphans[-1]
        problem = f"--resume auto: {folder} holds a run ({', '.join(traces)}) but no {C.RESUME_FILE}"
    if not allow_fresh:
        raise ConfigError(f"{problem}; refusing to start over: pass --resume PATH for another resume file, "
                          f"or --allow-fresh to start a new run")
    log.warning("%s; starting a new run (--allow-fresh)", problem)
    return None


def check_resume(path, world_size: int) -> dict:
    """The resume file at ``path``, read and checked once (ours, complete, written by ``world_size``
    processes); the runner continues from the state returned."""
    from minigpt4.runners import checkpointing as C

    return C.load_resume(path, world_size)


def main(argv=None, args=None) -> int:
    args = args or parse_args(argv)
    import torch

    from minigpt4.common import dist as D
    from minigpt4.common.config import Config
    from minigpt4.common.logging import setup_logger
    from minigpt4.common.registry import registry
    from minigpt4.runners.output import ensure_writable, job_folder, new_job_id, previous_run
    from minigpt4.common.tiny_world_paths import check_tiny_world, set_tiny_world
    from minigpt4.runners.preflight import check_model_files, check_run
    from minigpt4.tasks import setup_task

    setup_logger(int(os.environ.get("RANK", 0)))
    set_tiny_world(args.tiny_world)
    cfg = Config(args)
    check_tiny_world(cfg.config, args.cfg_path)
    run = cfg.run_cfg
    if run.get("threads"):
        torch.set_num_threads(int(run.threads))
    info = D.init_distributed_mode(run)
    setup_logger(info.rank)
    job_id = D.broadcast_object(run.get("job_id") or new_job_id())
    resume = resolve_resume(run, args.resume, args.allow_fresh)
    resume_state = None
    if resume is not None:
        resume_state = check_resume(resume, info.world_size)
        run.resume_ckpt_path = str(resume)
    out_dir = ensure_writable(job_folder(run, job_id, resume))
    if resume is None and D.broadcast_object(previous_run(out_dir)):
        if not args.overwrite:
            raise ConfigError(f"{out_dir} already holds a run (its resume.pt); refusing to overwrite it: "
                              f"continue it with --resume auto, pass --overwrite to start over, or set another "
                              f"run.job_id / run.output_dir")
        if info.is_main:
            log.warning("%s already holds a run; --overwrite: a new run replaces its checkpoints", out_dir)
    check_run(run)
    for section in ("model", "datasets"):
        if not cfg.config.get(section):
            raise ConfigError(f"{args.cfg_path}: no {section}: section (a training config has model, datasets and run)")
    check_model_files(cfg.model_cfg)
    if info.is_main:
        cfg.pretty_print()
        log.info("output folder: %s", out_dir)

    setup_seeds(run.seed + info.rank)
    task = setup_task(cfg)
    datasets = task.build_datasets(cfg)
    model = task.build_model(cfg, device=info.device)
    runner_cls = registry.get_runner_class(run.runner, key="run.runner")
    runner = runner_cls(cfg, job_id, task, model, datasets, dist_info=info, output_dir=out_dir,
                        resume=resume_state)
    result = runner.train()
    if info.is_main:
        log.info("done: %s", result)
    if result.get("stop_signal"):
        return 128 + int(signal.Signals[result["stop_signal"]])
    return 0


def cli(argv=None, prog: str = "train.py") -> int:
    """``main`` behind the command-line boundary: a user error is one line and exit status 2, a NaN/inf
    loss exit status 3; anything else keeps its traceback."""
    args = parse_args(argv, prog)
    from minigpt4.common import dist as D
    from minigpt4.runners import TrainingDiverged

    try:
        return run_cli(prog, main, args=args)
    except TrainingDiverged as e:
        print(f"{prog}: stopped: {e}", file=sys.stderr)
        return 3
    finally:
        D.cleanup()


def console() -> int:
    """The ``minigpt4-train`` console script."""
    return cli(prog="minigpt4-train")


if __name__ == "__main__":
    sys.exit(cli())
