"""Where the tiny world lives. The tiny configs write their paths as ``${tiny_world:backbones/llm}``; the
``tiny_world`` resolver joins them onto one folder: ``--tiny-world DIR`` when a command is given it, else
``tiny_world`` in the working directory, else ``tiny_world`` at the repository root. Explicit
``--options model.llama_model=...`` still override single paths (the tiny world's own pipeline does that).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from minigpt4.errors import UserError, non_empty

RESOLVER = "tiny_world"
DEFAULT = "tiny_world"
REPO_ROOT = Path(__file__).resolve().parents[2]
_chosen: list[Path | None] = [None]


class TinyWorldError(UserError, ValueError):
    """The tiny world a config points at is missing or incomplete (or ``--tiny-world`` does not apply)."""


def add_tiny_world_arg(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--tiny-world", type=non_empty, metavar="DIR", default=None,
                        help="the tiny world folder the tiny configs (tiny_eval.yaml, tiny_stage1/2.yaml) read from "
                             "(default: ./tiny_world, else tiny_world/ at the repository root)")
    return parser


def set_tiny_world(path) -> None:
    """Point the ``tiny_world`` resolver at ``path`` (``None``: the default lookup)."""
    _chosen[0] = None if path is None else Path(path).expanduser()


def tiny_world_dir() -> Path:
    if _chosen[0] is not None:
        return _chosen[0]
    here = Path(DEFAULT)
    if here.exists():
        return here
    in_repo = REPO_ROOT / DEFAULT
    return in_repo if in_repo.exists() else here


def _resolve(sub: str) -> str:
    return str(tiny_world_dir() / sub)


OmegaConf.register_resolver(RESOLVER, _resolve, replace=True)


def tiny_world_paths(cfg, prefix: str = "") -> dict[str, Path]:
    """``{dotted key: resolved path}`` for every value of ``cfg`` written as ``${tiny_world:...}``."""
    found = {}
    if isinstance(cfg, DictConfig):
        items = [(str(k), k) for k in cfg.keys()]
    elif isinstance(cfg, ListConfig):
        items = [(str(i), i) for i in range(len(cfg))]
    else:
        return found
    for name, key in items:
        node = cfg._get_node(key)
        dotted = f"{prefix}.{name}" if prefix else name
        if isinstance(node, (DictConfig, ListConfig)):
            found.update(tiny_world_paths(node, dotted))
        elif isinstance(node._value(), str) and f"${{{RESOLVER}:" in node._value():
            found[dotted] = Path(cfg[key])
    return found


def build_hint(root: Path) -> str:
    return f"build the tiny world first: python -m minigpt4.tiny_world --out {root}"


def check_tiny_world(cfg, cfg_path=None) -> None:
    """Refuse a tiny config whose tiny world is missing or incomplete (inputs only; output folders are
    created by training), and ``--tiny-world`` with a config that has no tiny-world paths."""
    used = tiny_world_paths(cfg)
    if not used:
        if _chosen[0] is not None:
            raise TinyWorldError(f"--tiny-world: {cfg_path or 'the config'} has no ${{tiny_world:...}} paths; the "
                                 "flag applies to eval_configs/tiny_eval.yaml and train_configs/tiny_stage1/2.yaml")
        return
    root = tiny_world_dir()
    if not root.is_dir():
        where = "" if _chosen[0] is not None else " (looked in the working directory and the repository root)"
        raise TinyWorldError(f"no tiny world at {root}{where}: {build_hint(root)}, or point --tiny-world DIR at one")
    for key, path in used.items():
        if key.rsplit(".", 1)[-1] == "output_dir":
            continue
        if not path.exists():
            raise TinyWorldError(f"{key}: {path} is missing, the tiny world at {root} is incomplete: {build_hint(root)}")
