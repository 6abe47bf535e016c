"""What the inference entry points (``minigpt4.caption``, ``minigpt4.chat``, ``demo.py``) share:
command-line arguments, loading the model from a config, and choosing the image processor, the
conversation template and the captioning prompt.

Image processor, in order of preference (the first one present wins):

1. ``datasets.<first>.vis_processor.eval``
2. ``datasets.<first>.vis_processor.train`` (what the original demo reads; the original eval configs set
   it to ``blip2_image_eval``). A ``blip2_image_train`` entry is replaced by ``blip2_image_eval`` with
   the same size/mean/std, so inference is always deterministic.
3. ``preprocess.vis_processor.eval`` (the model type's default YAML brings one), sized to
   ``model.image_size`` when that is set.
4. otherwise ``blip2_image_eval`` at ``model.image_size`` (a warning is logged).

A dataset processor whose ``image_size`` differs from ``model.image_size`` is an error naming both keys.

Big models: ``--low-resource`` (8-bit), ``--load-in-4bit`` (bitsandbytes) and ``--device-map auto``
(accelerate placement across GPUs) are shorthands for ``--options model.low_resource=True`` etc.; all
need CUDA and are refused on CPU with a message naming the key.

Importing this module is light (no torch, transformers or gradio): the entry points parse their
arguments first, so ``--help`` and usage errors are instant.
"""
from __future__ import annotations

import argparse
import logging

from minigpt4.errors import UsageError, non_empty
from minigpt4.common.tiny_world_paths import add_tiny_world_arg, check_tiny_world, set_tiny_world

log = logging.getLogger(__name__)

DEFAULT_INSTRUCTION = "Describe this image in detail."
TEMPLATES = ("auto", "training", "vicuna0", "llama2", "tokenizer")


def add_model_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--cfg-path", type=non_empty, required=True,
                        help="YAML config, e.g. eval_configs/tiny_eval.yaml (the tiny world) or "
                             "eval_configs/minigpt4_eval.yaml (real weights)")
    add_tiny_world_arg(parser)
    parser.add_argument("--device", default=None,
                        help="torch device, e.g. cpu, cuda, cuda:1 (default: run.device, else cuda if available)")
    parser.add_argument("--options", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. model.ckpt=/path/proj.pth model.torch_dtype=bf16 "
                             "(default: none)")
    parser.add_argument("--low-resource", action="store_true", help="8-bit LLM (bitsandbytes, CUDA only; default: off)")
    parser.add_argument("--load-in-4bit", action="store_true",
                        help="4-bit NF4 LLM (bitsandbytes, CUDA only; default: off)")
    parser.add_argument("--device-map", default=None,
                        help="place the LLM across GPUs with accelerate, e.g. auto or balanced (CUDA only; "
                             "default: one device)")
    parser.add_argument("--verbose", action="store_true",
                        help="also show library progress bars and info messages while loading (default: off)")
    return parser


def add_conversation_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of the interactive front ends (terminal chat, demo): template and answer budget."""
    parser.add_argument("--template", default="auto", choices=TEMPLATES,
                        help="conversation template; tokenizer = the LLM tokenizer's own chat template "
                             "(default: auto = model.chat_template if set, else the config's prompt_template "
                             "if set, else model_type's)")
    parser.add_argument("--max-new-tokens", type=int, default=300, help="longest answer in tokens (default: 300)")
    parser.add_argument("--max-length", type=int, default=2000,
                        help="context + answer budget in tokens; older turns are dropped to fit (default: 2000)")
    return parser


def check_port(port: int, flag: str = "--port") -> None:
    """A TCP port to listen on (the servers' ``--port``): 1..65535, else a usage error naming the flag."""
    if not 1 <= port <= 65535:
        raise UsageError(f"{flag} must be in 1..65535, got {port}")


def option_list(args) -> list[str]:
    options = list(args.options or [])
    if args.low_resource:
        options.append("model.low_resource=True")
    if args.load_in_4bit:
        options.append("model.load_in_4bit=True")
    if args.device_map:
        options.append(f"model.device_map={args.device_map}")
    if getattr(args, "template", None) == "tokenizer":
        options.append("model.chat_template=tokenizer")
    return options


def resolve_device(requested, cfg):
    import torch
    from omegaconf import OmegaConf

    from minigpt4.common.dist import default_device

    name = requested or OmegaConf.select(cfg, "run.device") or default_device().type
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"--device {name!r}: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device is available here; use --device cpu")
    return device


def load_config(args):
    from minigpt4.common.config import Config

    set_tiny_world(getattr(args, "tiny_world", None))
    cfg = Config.load(args.cfg_path, option_list(args)).config
    if "model" not in cfg:
        raise UsageError(f"{args.cfg_path}: the config has no model section")
    check_tiny_world(cfg, args.cfg_path)
    return cfg


def quiet_loading(verbose: bool = False) -> None:
    """Hide transformers' "Loading weights" bar and info chatter unless ``--verbose``."""
    from transformers.utils import logging as hf_logging

    if verbose:
        hf_logging.enable_progress_bar()
    else:
        hf_logging.disable_progress_bar()


def load_model(args):
    """``(cfg, model, vis_processor, device)`` from ``--cfg-path``/``--options``/``--device``."""
    from minigpt4.models import MiniGPT4
    from minigpt4.runners.preflight import check_model_files

    quiet_loading(getattr(args, "verbose", False))
    cfg = load_config(args)
    device = resolve_device(args.device, cfg)
    check_model_files(cfg.model, frozen_parts=True)  # every weight file, before anything is loaded
    model = MiniGPT4.from_config(cfg.model, device=device)
    model.eval()
    return cfg, model, vis_processor_from_config(cfg), device


def vis_processor_config(cfg) -> dict:
    """The processor settings picked as described in the module docstring."""
    from omegaconf import OmegaConf

    size = OmegaConf.select(cfg, "model.image_size")
    datasets = cfg.get("datasets") or {}
    if datasets:
        first = next(iter(datasets))
        for split in ("eval", "train"):
            entry = OmegaConf.select(cfg, f"datasets.{first}.vis_processor.{split}")
            if entry is None:
                continue
            entry = dict(OmegaConf.to_container(entry, resolve=True))
            if entry.get("name") == "blip2_image_train":
                entry = {k: v for k, v in entry.items() if k in ("image_size", "mean", "std")}
                entry["name"] = "blip2_image_eval"
            if size is not None and entry.get("image_size", 224) != size:
                raise UsageError(f"datasets.{first}.vis_processor.{split}.image_size={entry.get('image_size', 224)} "
                                 f"but model.image_size={size}; the vision tower needs images of its own size")
            return entry
    entry = OmegaConf.select(cfg, "preprocess.vis_processor.eval")
    if entry is not None:
        entry = dict(OmegaConf.to_container(entry, resolve=True))
        return {**entry, "image_size": size} if size is not None else entry
    log.warning("no vis_processor in the config (datasets.<name>.vis_processor or preprocess.vis_processor.eval); "
                "using blip2_image_eval at %d px", size or 224)
    return {"name": "blip2_image_eval", "image_size": size or 224}


def vis_processor_from_config(cfg):
    from omegaconf import OmegaConf

    from minigpt4.processors import build_processor

    return build_processor(OmegaConf.create(vis_processor_config(cfg)))


def conversation_from_config(model_cfg, template: str = "auto", tokenizer=None):
    """``auto``: the LLM tokenizer's own chat template when the config has ``chat_template: tokenizer``, else
    the training template when it has ``prompt_template`` (what a model trained here answers best to), else
    the original demo's template for ``model_type`` (Vicuna v0 by default). ``tokenizer``: the model's
    (loaded from ``model.llama_model`` when not given and the tokenizer template is chosen)."""
    from minigpt4.common.fields import typed
    from minigpt4.common.sections import ModelConfig
    from minigpt4.conversation.conversation import (CONV_DICT, CONV_VISION_Vicuna0, tokenizer_conversation,
                                                    training_conversation)

    if template not in TEMPLATES:
        raise UsageError(f"--template must be one of {TEMPLATES}, got {template!r}")
    model_cfg = typed(ModelConfig, model_cfg, "model")
    if template == "tokenizer" or (template == "auto" and model_cfg.chat_template == "tokenizer"):
        return tokenizer_conversation(tokenizer if tokenizer is not None else config_tokenizer(model_cfg))
    prompt_template = model_cfg.prompt_template
    if template == "training" or (template == "auto" and prompt_template):
        if not prompt_template:
            raise UsageError("--template training needs model.prompt_template in the config")
        return training_conversation(prompt_template, model_cfg.end_sym)
    if template == "llama2" or (template == "auto" and model_cfg.model_type == "pretrain_llama2"):
        return CONV_DICT["pretrain_llama2"].copy()
    return CONV_VISION_Vicuna0.copy()


def config_tokenizer(model_cfg):
    from minigpt4.models.llm import load_tokenizer

    return load_tokenizer(model_cfg.get("llama_model"), model_cfg.get("pad_token", "$$"))


def caption_prompt(model_cfg, prompt: str | None = None, tokenizer=None) -> str | None:
    """The captioning prompt. ``prompt`` containing ``<ImageHere>`` is used as is; other text is the
    instruction after the image. Default: ``prompt_template.format('<Img><ImageHere></Img> Describe this
    image in detail.')`` when the config has ``prompt_template``, else ``None`` (image only, as stage 1).
    With ``chat_template: tokenizer`` the user turn goes through the LLM tokenizer's own template instead."""
    from minigpt4.conversation.conversation import IMAGE_MESSAGE
    from minigpt4.models.prompting import IMAGE_PLACEHOLDER

    if prompt is not None and IMAGE_PLACEHOLDER in prompt:
        return prompt
    if model_cfg.get("chat_template") == "tokenizer":
        from minigpt4.models.chat_template import TokenizerTemplate

        text = f"{IMAGE_MESSAGE} {prompt if prompt is not None else DEFAULT_INSTRUCTION}"
        return TokenizerTemplate(tokenizer if tokenizer is not None else config_tokenizer(model_cfg)).user_prompt(text)
    template = model_cfg.get("prompt_template")
    if prompt is None and not template:
        return None
    message = f"{IMAGE_MESSAGE} {prompt if prompt is not None else DEFAULT_INSTRUCTION}"
    return template.format(message) if template else message


def caption_stop_strings(model) -> list[str]:
    """Rows stop at ``end_sym`` (a newline end_sym included, as stage-1 captions end with it) or EOS."""
    end = model.end_sym
    if end and not end.strip() and "\n" in end:
        return ["\n"]
    return model.stop_strings()

