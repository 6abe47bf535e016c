"""Layered YAML configs: model default -> dataset defaults -> user YAML -> ``--options`` overrides.

Mirrors the original's ``Config(args)`` (``args.cfg_path``, ``args.options``) with two fixes:
``--options model.model_type=X`` really selects X's default model YAML, and every key is checked
against :mod:`minigpt4.common.schema` so a typo is a one-line error naming the key. A model class or dataset
builder may declare its own keys (class attribute ``CONFIG_KEYS``); MiniGPT-4's are the default.
"""
from __future__ import annotations

import difflib
import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable

from omegaconf import DictConfig, ListConfig, OmegaConf

from minigpt4.errors import ConfigError
from minigpt4.common import registry as registry_module
from minigpt4.common import schema
from minigpt4.common import tiny_world_paths  # noqa: F401  (registers the ${tiny_world:...} resolver)
from minigpt4.common.registry import registry
from minigpt4.common.shipped import shipped_file

log = logging.getLogger(__name__)


def parse_options(options: Iterable[str] | None) -> DictConfig:
    """``["a.b=1", "c=x"]`` or alternating ``["a.b", "1", "c", "x"]`` -> DictConfig."""
    options = list(options or [])
    if not options:
        return OmegaConf.create()
    if all("=" in opt for opt in options):
        dotlist = options
    elif not any("=" in opt for opt in options) and len(options) % 2 == 0:
        dotlist = [f"{k}={v}" for k, v in zip(options[::2], options[1::2])]
    else:
        raise ConfigError(f"--options: expected 'key=value ...' or alternating 'key value ...', got {options}")
    out = OmegaConf.create()
    for item in dotlist:
        key, raw = item.split("=", 1)
        parsed = OmegaConf.from_dotlist([item])
        if OmegaConf.select(parsed, key) is None and raw.strip() not in ("", "null", "~"):
            parsed = OmegaConf.create({})  # YAML read the value as a comment (e.g. "###"): keep the text
            OmegaConf.update(parsed, key, raw, force_add=True)
        out = OmegaConf.merge(out, parsed)
    return out


def resolve_path(path: str | Path) -> Path:
    """A relative path as given (from the working directory), else relative to the repository root, else
    the package's copy of the repository's config folders (:mod:`minigpt4.common.shipped`)."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    in_repo = Path(registry.get_path("repo_root")) / p
    if in_repo.exists():
        return in_repo
    return shipped_file(p) or p


def _suggest(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_mapping(section: str, cfg, known: dict[str, tuple], strict_unknown: bool = True) -> None:
    if cfg is None:
        return
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{section}: expected a mapping, got {type(cfg).__name__}")
    for key in cfg.keys():
        if key not in known:
            if strict_unknown:
                raise ConfigError(f"unknown key {section}.{key}{_suggest(str(key), known)}")
            continue
        value = OmegaConf.to_object(cfg[key]) if isinstance(cfg[key], (DictConfig, ListConfig)) else cfg[key]
        types = known[key]
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            names = "/".join("null" if t is type(None) else t.__name__ for t in types)
            raise ConfigError(f"{section}.{key} must be {names}, got {value!r} ({type(value).__name__})")


def _declared_keys(kind: str, name, default: dict[str, tuple]) -> dict[str, tuple]:
    """The keys a registered model / builder declares (class attribute ``CONFIG_KEYS``), else ``default``.
    An unknown name keeps ``default`` here; resolving it later gives the error that names it."""
    try:
        cls = getattr(registry, f"get_{kind}_class")(name) if isinstance(name, str) else None
    except ConfigError:
        cls = None
    return getattr(cls, "CONFIG_KEYS", None) or default


def validate(cfg: DictConfig) -> None:
    for key in cfg.keys():
        if key not in schema.TOP_LEVEL:
            raise ConfigError(f"unknown top-level section {key!r}{_suggest(str(key), schema.TOP_LEVEL)}")
    model = cfg.get("model")
    arch = model.get("arch") if isinstance(model, DictConfig) else None
    _check_mapping("model", model, _declared_keys("model", arch, schema.MODEL_KEYS))
    _check_mapping("run", cfg.get("run"), schema.RUN_KEYS)
    datasets = cfg.get("datasets")
    if datasets is not None:
        if not isinstance(datasets, DictConfig):
            raise ConfigError("datasets: expected a mapping of dataset name -> settings")
        for name in datasets.keys():
            _check_mapping(f"datasets.{name}", datasets[name], _declared_keys("builder", name, schema.DATASET_KEYS))


def load_yaml(path) -> DictConfig:
    """The user's YAML as a mapping; a missing file, a folder, a YAML error (with its line and column) or a
    file that is not a mapping is a one-line error naming the file."""
    import yaml

    p = resolve_path(path)
    if not p.is_file():
        raise ConfigError(f"--cfg-path {path}: " + ("is a folder, not a YAML file" if p.is_dir() else "no such file"))
    try:
        cfg = OmegaConf.load(p)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"--cfg-path {path}: not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--cfg-path {path}: not a text (YAML) file") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"--cfg-path {path}: expected a mapping of sections (model, datasets, run), "
                          f"got a {type(cfg).__name__}")
    return cfg


def model_default_config(arch: str, model_type: str | None) -> DictConfig:
    model_cls = registry.get_model_class(arch, key="model.arch")
    if model_type is None:
        return OmegaConf.create()
    table = getattr(model_cls, "PRETRAINED_MODEL_CONFIG_DICT", {})
    if model_type not in table:
        raise ConfigError(f"model.model_type {model_type!r} is not known for arch {arch!r}"
                          f"{_suggest(model_type, table)}; known: {sorted(table)}")
    return OmegaConf.load(Path(registry.get_path("library_root")) / table[model_type])


def dataset_default_config(name: str, dataset_cfg) -> DictConfig:
    builder_cls = registry.get_builder_class(name, key=f"datasets.{name}")
    kind = (dataset_cfg or {}).get("type", "default")
    table = getattr(builder_cls, "DATASET_CONFIG_DICT", {})
    if kind not in table:
        raise ConfigError(f"datasets.{name}.type {kind!r} unknown; known: {sorted(table)}")
    return OmegaConf.load(Path(registry.get_path("library_root")) / table[kind])


class Config:
    """``Config(args)`` with ``args.cfg_path`` and ``args.options`` (list of ``k=v``), as the original."""

    def __init__(self, args):
        registry_module.register_all()

        self.args = args
        user = load_yaml(args.cfg_path) if getattr(args, "cfg_path", None) else OmegaConf.create()
        if getattr(args, "cfg_dict", None) is not None:
            user = OmegaConf.merge(user, OmegaConf.create(args.cfg_dict))
        overrides = parse_options(getattr(args, "options", None))
        self.config = self.build(user, overrides)

    @classmethod
    def load(cls, cfg_path: str | Path | None = None, options: Iterable[str] | None = None,
             cfg_dict: dict | None = None) -> "Config":
        return cls(SimpleNamespace(cfg_path=cfg_path, options=list(options or []), cfg_dict=cfg_dict))

    @staticmethod
    def build(user: DictConfig, overrides: DictConfig) -> DictConfig:
        effective = OmegaConf.merge(user, overrides)
        validate(effective)  # catch typos in the user's own keys before defaults hide them
        parts = []
        if "run" in effective:
            parts.append(OmegaConf.create({"run": effective.run}))
        if "preprocess" in effective:
            parts.append(OmegaConf.create({"preprocess": effective.preprocess}))
        if "model" in effective:
            model = effective.model
            arch = model.get("arch")
            if arch is None:
                raise ConfigError("model.arch is required (e.g. minigpt4)")
            default = model_default_config(arch, model.get("model_type"))
            parts.append(OmegaConf.merge(default, {"model": model}))
        for name, dcfg in (effective.get("datasets") or {}).items():
            default = dataset_default_config(name, dcfg)
            parts.append(OmegaConf.merge(default, {"datasets": {name: dcfg}}))
        merged = OmegaConf.merge(*parts, overrides) if parts else overrides
        validate(merged)
        return merged

    @property
    def run_cfg(self) -> DictConfig:
        return self.config.get("run", OmegaConf.create())

    @property
    def model_cfg(self) -> DictConfig:
        return self.config.model

    @property
    def datasets_cfg(self) -> DictConfig:
        return self.config.get("datasets", OmegaConf.create())

    def to_dict(self) -> dict:
        return OmegaConf.to_container(self.config, resolve=True)

    def pretty_print(self) -> None:
        log.info("\n%s", json.dumps(self.to_dict(), indent=2, default=str))
