"""Layered YAML configs: model default -> dataset defaults -> user YAML -> ``--options`` overrides.

Mirrors the original's ``Config(args)`` (``args.cfg_path``, ``args.options``) with two fixes:
``--options model.model_type=X`` really selects X's default model YAML, and every key down to the leaves is
checked against its declaration (:mod:`minigpt4.common.sections`), so a typo, a wrong type, a quoted number or
a value out of range is a one-line error naming the key. The result holds typed sections (every default filled
in by its one owner). A model class or dataset builder may declare its own section (class attribute ``CONFIG``
or ``CONFIG_KEYS``); MiniGPT-4's are the default.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable

from omegaconf import DictConfig, OmegaConf

from minigpt4.common import fields, schema, sections
from minigpt4.common import registry as registry_module
from minigpt4.common.fields import suggest as _suggest
from minigpt4.common import tiny_world_paths  # noqa: F401  (registers the ${tiny_world:...} resolver)
from minigpt4.common.registry import registry
from minigpt4.common.shipped import shipped_file
from minigpt4.errors import ConfigError

log = logging.getLogger(__name__)


KEY_TOKEN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _option_value(item: str, key: str, raw: str):
    """The YAML value of ``raw``; text YAML cannot read (``@@@``, or ``###`` which it reads as a comment) is kept
    as a string."""
    import yaml

    try:
        parsed = OmegaConf.from_dotlist([f"{key}={raw}"])
        value = OmegaConf.select(parsed, key)
    except (yaml.YAMLError, ValueError):  # e.g. a ScannerError for "@@@": the user meant the text
        return raw
    if value is None and raw.strip() not in ("", "null", "~", "Null", "NULL"):
        return raw  # YAML read the value as a comment (e.g. "###"): keep the text
    return parsed


def parse_options(options: Iterable[str] | None, require_section: bool = True) -> DictConfig:
    """``["a.b=1", "c=x"]`` or alternating ``["a.b", "1", "c", "x"]`` -> DictConfig. A key must be a dotted
    name (``run.max_epoch``) unless ``require_section`` is false; a malformed item is an error naming it."""
    options = list(options or [])
    if not options:
        return OmegaConf.create()
    if all("=" in opt for opt in options):
        dotlist = options
    elif not any("=" in opt for opt in options) and len(options) % 2 == 0:
        dotlist = [f"{k}={v}" for k, v in zip(options[::2], options[1::2])]
    else:
        bad = next((o for o in options if "=" not in o), options[0])
        raise ConfigError(f"--options {bad!r}: expected key=value (e.g. run.max_epoch=2), or only alternating "
                          f"'key value' pairs")
    out = OmegaConf.create()
    for item in dotlist:
        key, raw = item.split("=", 1)
        key = key.strip()
        if not KEY_TOKEN.match(key):
            raise ConfigError(f"--options {item!r}: {key!r} is not a config key; expected a dotted name such as "
                              f"model.end_sym or run.max_epoch")
        if require_section and "." not in key:
            raise ConfigError(f"--options {item!r}: name the section too, e.g. run.{key} or model.{key}")
        value = _option_value(item, key, raw)
        if not OmegaConf.is_config(value):
            parsed = OmegaConf.create({})
            OmegaConf.update(parsed, key, value, force_add=True)
            value = parsed
        out = OmegaConf.merge(out, value)
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


def section_of(kind: str, name, default):
    """The section a registered model / builder declares (class attribute ``CONFIG``, a dataclass, or the
    table ``CONFIG_KEYS``), else ``default``. An unknown name keeps ``default`` here; resolving it later
    gives the error that names it."""
    try:
        cls = getattr(registry, f"get_{kind}_class")(name) if isinstance(name, str) else None
    except ConfigError:
        cls = None
    return getattr(cls, "CONFIG", None) or getattr(cls, "CONFIG_KEYS", None) or default


def _check(section: str, cfg, declared, warn_compat: bool) -> None:
    if isinstance(declared, dict):
        fields.check_table(section, cfg, declared)
    elif section.startswith("datasets."):
        sections.check_dataset(section, cfg, declared, warn_compat=warn_compat)
    else:
        fields.check_section(section, cfg, declared, warn_compat=warn_compat)


def validate(cfg: DictConfig, warn_compat: bool = False) -> None:
    """Every section down to its leaves; ``warn_compat``: warn once for each accepted-but-unread key set."""
    for key in cfg.keys():
        if key not in schema.TOP_LEVEL:
            raise ConfigError(f"unknown top-level section {key!r}{_suggest(str(key), schema.TOP_LEVEL)}")
    model = cfg.get("model")
    arch = model.get("arch") if isinstance(model, DictConfig) else None
    _check("model", model, section_of("model", arch, sections.ModelConfig), warn_compat)
    _check("run", cfg.get("run"), sections.RunConfig, warn_compat)
    preprocess = cfg.get("preprocess")
    if preprocess is not None:
        if not isinstance(preprocess, DictConfig):
            raise ConfigError("preprocess: expected a mapping with vis_processor / text_processor")
        for name in preprocess.keys():
            if name not in ("vis_processor", "text_processor"):
                raise ConfigError(f"unknown key preprocess.{name}"
                                  f"{_suggest(str(name), ('vis_processor', 'text_processor'))}")
            if preprocess[name] is not None:
                sections.processor_entries(f"preprocess.{name}", fields.plain(preprocess[name]))
    datasets = cfg.get("datasets")
    if datasets is not None:
        if not isinstance(datasets, DictConfig):
            raise ConfigError("datasets: expected a mapping of dataset name -> settings")
        for name in datasets.keys():
            _check(f"datasets.{name}", datasets[name], section_of("builder", name, sections.DatasetConfig),
                   warn_compat)


def _typed(section: str, cfg, declared):
    return fields.typed(declared, cfg, section) if not isinstance(declared, dict) else cfg


def load_yaml(path, what: str = "--cfg-path",
              expected: str = "a mapping of sections (model, datasets, run)") -> DictConfig:
    """The user's YAML as a mapping; a missing file, a folder, a YAML error (with its line and column), a file
    that is not text or one that is not a mapping is a one-line error naming the file (as ``what PATH``)."""
    import yaml

    p = resolve_path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {path}: " + ("is a folder, not a YAML file" if p.is_dir() else "no such file"))
    try:
        cfg = OmegaConf.load(p)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{what} {path}: not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path}: not a text (YAML) file") from None
    except OSError as e:  # omegaconf's "Invalid loaded object type: int" for a file that is one number
        if "Invalid loaded object type" not in str(e):
            raise
        raise ConfigError(f"{what} {path}: expected {expected}, got a {str(e).rsplit(' ', 1)[-1]}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{what} {path}: expected {expected}, got a {type(cfg).__name__}")
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
        validate(effective, warn_compat=True)  # the user's own keys, before defaults hide a typo
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
        return Config.typed(merged)

    @staticmethod
    def typed(merged: DictConfig) -> DictConfig:
        """Each section as the typed node of its declaration, every default filled in."""
        out = OmegaConf.create({"run": _typed("run", merged.get("run"), sections.RunConfig)})
        if "preprocess" in merged:
            out.preprocess = merged.preprocess
        if "model" in merged:
            out.model = _typed("model", merged.model, section_of("model", merged.model.get("arch"),
                                                                 sections.ModelConfig))
        if "datasets" in merged:
            out.datasets = {name: _typed(f"datasets.{name}", block,
                                         section_of("builder", name, sections.DatasetConfig))
                            for name, block in merged.datasets.items()}
        return out

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
