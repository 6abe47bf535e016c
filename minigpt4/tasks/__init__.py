"""Tasks (``run.task``): ``image_text_pretrain``."""
from minigpt4.common.registry import registry
from minigpt4.errors import ConfigError
from minigpt4.tasks.base_task import BaseTask, ImageTextPretrainTask


def setup_task(cfg):
    """The task named by ``run.task`` (required), as the original's ``tasks.setup_task``."""
    run = cfg.run_cfg
    name = run.get("task") if run is not None else None
    if not name:
        raise ConfigError("run.task is required (e.g. image_text_pretrain)")
    return registry.get_task_class(name, key="run.task").setup_task(cfg)


__all__ = ["BaseTask", "ImageTextPretrainTask", "setup_task"]
