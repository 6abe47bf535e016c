"""Name -> class registry for models, dataset builders, processors, tasks, runners and LR schedules.

Registration is an import side effect of the modules that define the classes; the first lookup (or
:func:`register_all`) imports them all, so a YAML can name ``arch: minigpt4`` or ``task: image_text_pretrain``
whatever was imported before.
"""
from __future__ import annotations

import difflib
import importlib
from pathlib import Path

from minigpt4.errors import ConfigError

REGISTERING_MODULES = ("minigpt4.datasets", "minigpt4.models", "minigpt4.processors", "minigpt4.runners",
                       "minigpt4.tasks", "minigpt4.gpt4image.register")


def register_all() -> None:
    """Import every module that registers a model, builder, processor, task, runner or LR schedule."""
    for name in REGISTERING_MODULES:
        importlib.import_module(name)

KINDS = ("model", "builder", "processor", "task", "runner", "lr_scheduler")


class Registry:
    mapping: dict[str, dict] = {f"{kind}_name_mapping": {} for kind in KINDS}
    mapping["paths"] = {}

    # ------------------------------------------------------------------ registration
    @classmethod
    def _register(cls, kind: str, name: str):
        def wrap(obj):
            table = cls.mapping[f"{kind}_name_mapping"]
            if name in table and table[name] is not obj:
                raise KeyError(f"{kind} name {name!r} already registered for {table[name]!r}")
            table[name] = obj
            return obj

        return wrap

    @classmethod
    def register_model(cls, name: str):
        return cls._register("model", name)

    @classmethod
    def register_builder(cls, name: str):
        return cls._register("builder", name)

    @classmethod
    def register_processor(cls, name: str):
        return cls._register("processor", name)

    @classmethod
    def register_task(cls, name: str):
        return cls._register("task", name)

    @classmethod
    def register_runner(cls, name: str):
        return cls._register("runner", name)

    @classmethod
    def register_lr_scheduler(cls, name: str):
        return cls._register("lr_scheduler", name)

    @classmethod
    def register_path(cls, name: str, path: str | Path):
        cls.mapping["paths"][name] = str(path)

    # ------------------------------------------------------------------ lookup
    @classmethod
    def _get(cls, kind: str, name: str, key: str | None = None):
        """The class registered as ``name``; an unknown name is a :class:`ConfigError` naming the config
        ``key`` it came from (e.g. ``run.task``), the closest known name or the known ones."""
        table = cls.mapping[f"{kind}_name_mapping"]
        if name not in table:
            register_all()
        if name not in table:
            close = difflib.get_close_matches(str(name), list(table), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {sorted(table)}"
            raise ConfigError(f"{key + ': ' if key else ''}unknown {kind} {name!r}{hint}")
        return table[name]

    @classmethod
    def get_model_class(cls, name: str, key: str | None = None):
        return cls._get("model", name, key)

    @classmethod
    def get_builder_class(cls, name: str, key: str | None = None):
        return cls._get("builder", name, key)

    @classmethod
    def get_processor_class(cls, name: str, key: str | None = None):
        return cls._get("processor", name, key)

    @classmethod
    def get_task_class(cls, name: str, key: str | None = None):
        return cls._get("task", name, key)

    @classmethod
    def get_runner_class(cls, name: str, key: str | None = None):
        return cls._get("runner", name, key)

    @classmethod
    def get_lr_scheduler_class(cls, name: str, key: str | None = None):
        return cls._get("lr_scheduler", name, key)

    @classmethod
    def get_path(cls, name: str) -> str:
        return cls.mapping["paths"][name]

    @classmethod
    def _list(cls, kind: str) -> list[str]:
        register_all()
        return sorted(cls.mapping[f"{kind}_name_mapping"])

    @classmethod
    def list_models(cls):
        return cls._list("model")

    @classmethod
    def list_builders(cls):
        return cls._list("builder")

    @classmethod
    def list_processors(cls):
        return cls._list("processor")

    @classmethod
    def list_tasks(cls):
        return cls._list("task")

    @classmethod
    def list_runners(cls):
        return cls._list("runner")

    @classmethod
    def list_lr_schedulers(cls):
        return cls._list("lr_scheduler")


registry = Registry()
LIBRARY_ROOT = Path(__file__).resolve().parents[1]
registry.register_path("library_root", LIBRARY_ROOT)
registry.register_path("repo_root", LIBRARY_ROOT.parent)
