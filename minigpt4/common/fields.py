"""Typed config sections: how a key is declared (type, default, range, one-line help) and how a section of
the merged YAML is checked against its declaration and turned into a typed OmegaConf node.

A section is a dataclass whose fields are made with :func:`key`::

    @dataclass
    class RunConfig:
        init_lr: Optional[float] = key(None, "peak learning rate", gt=0)

Rules applied to every value (one-line :class:`ConfigError` naming ``section.key``):

- unknown keys are refused, with the closest known key suggested;
- the type comes from the annotation (``Any`` fields give theirs as ``types=``); a bool is never a number, a
  whole number is accepted where a float is expected, a float is never accepted where a whole number is;
- **quoted numbers are refused** (``init_lr: '1e-3'``): the message says to write the number without quotes;
- numbers must be finite and inside ``gt`` / ``ge`` / ``lt`` / ``le``; ``choices`` lists the accepted values;
- ``check=`` runs a key's own test (e.g. a device name); a nested dataclass is checked key by key;
- a section's staticmethod ``check_together(values)`` tests keys against each other (``min_scale <= max_scale``)
  on the values with every default filled in, and returns the problem (the message names the section);
- a ``{key: types}`` table (a model class's ``CONFIG_KEYS``) gives bounds with :class:`ranged` entries;
- keys declared ``compat="..."`` are accepted for the original's YAMLs but not read: setting one logs one
  warning saying so.
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import typing
from typing import Any, Callable, Iterable

from omegaconf import DictConfig, ListConfig, OmegaConf

from minigpt4.errors import ConfigError, UserError  # noqa: F401  (ConfigError re-exported)

log = logging.getLogger(__name__)
NoneType = type(None)




def key(default: Any, help: str, *, types: tuple | None = None, gt=None, ge=None, lt=None, le=None,
        choices: Iterable | None = None, compat: str | None = None, check: Callable | None = None):
    """A declared config key. ``compat``: why the key is accepted although nothing reads it."""
    meta = {"help": help, "types": types, "gt": gt, "ge": ge, "lt": lt, "le": le,
            "choices": tuple(choices) if choices is not None else None, "compat": compat, "check": check}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    if dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=type(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class ranged(tuple):
    """A ``{key: types}`` table entry with the bounds :func:`key` takes, e.g. ``ranged((int, float), ge=0, lt=1)``;
    it is still the tuple of accepted types for code that reads the table."""

    def __new__(cls, types: tuple, **meta):
        entry = super().__new__(cls, types)
        entry.meta = meta
        return entry


def suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _accepted(tp) -> tuple:
    """Annotation -> accepted Python types (``float`` accepts int too)."""
    if tp is Any:
        return (object,)
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        out: tuple = ()
        for arg in typing.get_args(tp):
            out += _accepted(arg)
        return out
    if origin is not None:
        return (origin,)
    return (int, float) if tp is float else (tp,)


def declared(cls) -> dict[str, tuple[dataclasses.Field, tuple]]:
    """``{name: (field, accepted types)}`` of a section dataclass."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        types = f.metadata.get("types") or _accepted(hints[f.name])
        out[f.name] = (f, types, hints[f.name])
    return out


def _type_names(types: tuple) -> str:
    """``int``, ``float``, ``int/str`` ... (null is not named: the message is about a value that was given)."""
    if int in types and float in types:
        types = tuple(t for t in types if t is not int)
    return "/".join(getattr(t, "__name__", str(t)) for t in types if t is not NoneType) or "null"


def _is_number_text(value: str) -> bool:
    try:
        float(value.strip())
    except ValueError:
        return False
    return bool(value.strip())


def plain(value):
    return OmegaConf.to_object(value) if isinstance(value, (DictConfig, ListConfig)) else value


def check_value(name: str, value, types: tuple, meta) -> None:
    """One key's value against its declaration; ``name`` is the full dotted key for the message."""
    numeric = int in types or float in types
    if object not in types:
        if isinstance(value, str) and numeric and str not in types and _is_number_text(value):
            if not math.isfinite(float(value)):  # nan / inf: what YAML reads as a word, not a quoted number
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
            raise ConfigError(f"{name} must be {_type_names(types)}, got the quoted string {value!r}: "
                              "write the number without quotes (quoted numbers are refused)")
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if isinstance(value, float) and float not in types and int in types:
            ok = False
        if not ok:
            raise ConfigError(f"{name} must be {_type_names(types)}, got {value!r} ({type(value).__name__})")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        for bound, test, text in (("gt", lambda v, b: v > b, ">"), ("ge", lambda v, b: v >= b, ">="),
                                  ("lt", lambda v, b: v < b, "<"), ("le", lambda v, b: v <= b, "<=")):
            b = meta.get(bound)
            if b is not None and not test(value, b):
                raise ConfigError(f"{name} must be {text} {b}, got {value!r}")
    choices = meta.get("choices")
    if choices is not None and value is not None and value not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}{suggest(str(value), choices)}")
    check = meta.get("check")
    if check is not None and value is not None:
        problem = check(value)
        if problem:
            raise ConfigError(f"{name}: {problem}")


def _default(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def check_section(section: str, cfg, cls, *, warn_compat: bool = False) -> None:
    """Every key of ``cfg`` (a mapping or None) against the dataclass ``cls``."""
    if cfg is None:
        return
    if not isinstance(cfg, (DictConfig, dict)):
        raise ConfigError(f"{section}: expected a mapping of keys, got {plain(cfg)!r} ({type(plain(cfg)).__name__})")
    known = declared(cls)
    for name in cfg.keys():
        if name not in known:
            raise ConfigError(f"unknown key {section}.{name}{suggest(str(name), known)}")
        f, types, hint = known[name]
        value = plain(cfg[name])
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict) and not isinstance(value, hint):  # a node already typed by ``hint``
                raise ConfigError(f"{section}.{name} must be a mapping, got {value!r}")
            check_section(f"{section}.{name}", cfg[name], hint, warn_compat=warn_compat)
            continue
        check_value(f"{section}.{name}", value, types, f.metadata)
        if warn_compat and f.metadata.get("compat") and value is not None and value is not False \
                and value != _default(f):
            log.warning("%s.%s is ignored: %s", section, name, f.metadata["compat"])
    together = getattr(cls, "check_together", None)
    if together is not None:
        values = {name: plain(cfg[name]) if name in cfg else _default(f) for name, (f, _, _) in known.items()}
        problem = together(values)
        if problem:
            raise ConfigError(f"{section}: {problem}")


def check_table(section: str, cfg, table: dict[str, tuple]) -> None:
    """A section declared as a plain ``{key: accepted types}`` table (a model class's ``CONFIG_KEYS``)."""
    if cfg is None:
        return
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{section}: expected a mapping of keys, got {type(plain(cfg)).__name__}")
    for name in cfg.keys():
        if name not in table:
            raise ConfigError(f"unknown key {section}.{name}{suggest(str(name), table)}")
        check_value(f"{section}.{name}", plain(cfg[name]), table[name], getattr(table[name], "meta", {}))


def typed(cls, cfg=None, section: str = "") -> DictConfig:
    """``cfg`` (a mapping, DictConfig or None) checked against ``cls`` and returned as a typed node with every
    default filled in. A node already typed by ``cls`` is returned as is."""
    if isinstance(cfg, DictConfig) and OmegaConf.get_type(cfg) is cls:
        return cfg
    section = section or getattr(cls, "SECTION", cls.__name__)
    if cfg is not None and not OmegaConf.is_config(cfg):
        cfg = OmegaConf.create(dict(cfg))
    check_section(section, cfg, cls)
    node = OmegaConf.structured(cls)
    return OmegaConf.merge(node, cfg) if cfg is not None else node


def table_of(cls) -> dict[str, tuple]:
    """``{key: accepted types}`` of a section dataclass (the older table form, for callers that still use it)."""
    return {name: (dict,) if dataclasses.is_dataclass(hint) else types
            for name, (f, types, hint) in declared(cls).items()}


def describe(cls, prefix: str) -> list[tuple[str, str, str, str]]:
    """``[(dotted key, type, default, help)]`` for docs and ``python -m minigpt4.config_keys``."""
    rows = []
    for name, (f, types, hint) in declared(cls).items():
        if dataclasses.is_dataclass(hint):
            rows += describe(hint, f"{prefix}.{name}")
            continue
        default = _default(f)
        meta = f.metadata
        rules = [f"{t} {meta[b]}" for b, t in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
                 if meta.get(b) is not None]
        if meta.get("choices"):
            rules.append("one of " + "/".join(map(str, meta["choices"])))
        help_text = meta.get("help", "")
        if meta.get("compat"):
            help_text = f"(accepted, not read: {meta['compat']}) {help_text}"
        kind = _type_names(types) if object not in types else "any"
        rows.append((f"{prefix}.{name}", kind + (f", {', '.join(rules)}" if rules else ""), repr(default), help_text))
    return rows
