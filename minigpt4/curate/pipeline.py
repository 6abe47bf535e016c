"""Running the stages in order, each one skipping what its file already holds.

``all`` is describe, fix, filter, review, apply-review (only when review edits are given) and export.
``force`` deletes the named stages' outputs first, so they are made again from scratch.
"""
from __future__ import annotations

import logging
import shutil

from minigpt4.curate import describe, export, filter as filter_stage, fix, review
from minigpt4.curate.config import STAGES, CurateError
from minigpt4.curate.workdir import WorkDir, check_folder

log = logging.getLogger(__name__)


def parse_stages(stages: str | list[str] | tuple, *, has_edits: bool = False) -> list[str]:
    names = [s.strip() for s in (stages.split(",") if isinstance(stages, str) else stages) if s.strip()]
    if not names:
        raise CurateError(f"--stages {stages if isinstance(stages, str) else ','.join(stages)!r}: names no stage; "
                          f"give all, or a comma list of {', '.join(STAGES)}")
    if names == ["all"]:
        return [s for s in STAGES if s != "apply-review" or has_edits]
    for name in names:
        if name not in STAGES:
            raise CurateError(f"--stages: unknown stage {name!r}; stages are all, {', '.join(STAGES)}")
    return [s for s in STAGES if s in names]  # always in pipeline order


def _clear(cfg, work: WorkDir, stage: str) -> None:
    if stage == "export":
        shutil.rmtree(export.export_dir(cfg, work), ignore_errors=True)
        work.path("summary").unlink(missing_ok=True)
        return
    work.path(stage).unlink(missing_ok=True)
    if stage == "describe":
        shutil.rmtree(work.images, ignore_errors=True)
    if stage == "fix":
        (work.root / "fix_usage.json").unlink(missing_ok=True)
    log.info("%s: previous output removed (--force)", stage)


def run(cfg, *, stages="all", model=None, vis_processor=None, model_args: dict | None = None,
        review_edits=None, retry_failed: bool = False, force: bool = False, fixer=None,
        rank: int = 0, world_size: int = 1) -> dict:
    """Run ``stages`` of the curation described by ``cfg`` (the ``curate`` section, see
    :func:`minigpt4.curate.config.load`). Returns ``{"stages": {stage: counts}, "summary": {...}}``.

    ``model``/``vis_processor``: an already loaded stage-1 model for describe (else ``model_args`` =
    ``{"cfg_path", "options", "device"}`` is loaded when there is something to describe).
    ``fixer``: an already built :class:`~minigpt4.curate.fixers.Fixer` instead of ``cfg.fix.fixer``.
    """
    edits = review_edits or cfg.review.edits
    names = parse_stages(stages, has_edits=bool(edits))
    work = WorkDir(cfg.work_dir)
    check_folder(work.root, "curate.work_dir (--work-dir)")  # before any stage does work
    if "export" in names:
        check_folder(export.export_dir(cfg, work), "curate.export.out (--export-out)")
    if "apply-review" in names and edits:
        review.parse_edits(edits)
    if "fix" in names and fixer is None and cfg.fix.fixer == "hf":
        from minigpt4.curate.fix_hf import check_model

        check_model(cfg.fix.hf)
    if "fix" in names and "describe" in names and fixer is None and cfg.fix.fixer == "openai":
        from minigpt4.curate.fix_openai import OpenAIFixer

        OpenAIFixer(cfg.fix.openai, cfg.fix.prompt).close()  # its settings and endpoint, before describe runs
    work.make()
    if force and rank == 0:
        for name in names:
            _clear(cfg, work, name)
    if force and world_size > 1:
        from minigpt4.common import dist

        dist.barrier()
    results = {}
    for name in names:
        if name == "describe":
            results[name] = describe.run_describe(cfg, work, model=model, vis_processor=vis_processor,
                                                  model_args=model_args, rank=rank, world_size=world_size)
            continue
        if rank != 0:
            break
        if name == "fix":
            results[name] = fix.run_fix(cfg, work, retry_failed=retry_failed, fixer=fixer)
        elif name == "filter":
            results[name] = filter_stage.run_filter(cfg, work)
        elif name == "review":
            results[name] = review.run_review(cfg, work)
        elif name == "apply-review":
            results[name] = review.run_apply_review(cfg, work, edits)
        elif name == "export":
            results[name] = export.run_export(cfg, work)
    summary = export.write_summary(cfg, work) if rank == 0 else {}
    return {"stages": results, "summary": summary}
