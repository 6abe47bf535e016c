"""Stage-2 data curation, the paper's way: the stage-1 model describes images, a fixer repairs the
paragraphs, rules filter them, a person reviews them, and the rest becomes a ``cc_sbu_align`` folder.

    python -m minigpt4.curate --config curate.yaml --cfg-path stage1_eval.yaml

Python::

    from minigpt4 import curate
    cfg = curate.load_config("curate.yaml", images="photos/", work_dir="work", fixer="rules")
    result = curate.run(cfg, model_args={"cfg_path": "stage1_eval.yaml", "options": [], "device": "cpu"})
    result["summary"]   # described, continued, fixed, fix_failures, rejected_by_reason, kept, ...

``curate.run(cfg, model=model, vis_processor=vis)`` uses an already loaded stage-1 model instead.
"""
from minigpt4.curate.config import DEFAULTS, FIX_PROMPT, CurateError, load
from minigpt4.curate.pipeline import run

__all__ = ["CurateError", "DEFAULTS", "FIX_PROMPT", "load_config", "run"]


def load_config(path=None, options=None, *, images=None, work_dir=None, num_images=None, seed=None, fixer=None,
                export_out=None, review_edits=None):
    """The ``curate`` section: defaults <- ``path``'s ``curate:`` <- ``options`` <- the keyword arguments."""
    overrides = {"images": None if images is None else str(images),
                 "work_dir": None if work_dir is None else str(work_dir),
                 "num_images": num_images, "seed": seed, "fix": {"fixer": fixer},
                 "export": {"out": None if export_out is None else str(export_out)},
                 "review": {"edits": None if review_edits is None else str(review_edits)}}
    return load(path, options, overrides)
