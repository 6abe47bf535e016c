"""MiniGPT-4 as a training library. Configs name models, dataset builders, processors, tasks, runners and
LR schedules; the registry imports the modules that register them on its first lookup, so importing the
package (and every command's ``--help``) stays light."""
from minigpt4.common.registry import register_all, registry

__all__ = ["registry", "register_all"]
