"""The ``curate:`` config section: defaults, the paper's prompts, and validation.

A curation YAML holds one ``curate:`` mapping; every key below has a default, so a config names only
what it changes. An unknown key (a typo), a wrong type or a number out of its range is a one-line
:class:`CurateError` naming it (a typo with the closest known key suggested). The stage-1 model itself
comes from the usual model config (``--cfg-path``).
"""
from __future__ import annotations

import difflib
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from minigpt4.errors import ConfigError, UserError
from minigpt4.common.config import load_yaml, parse_options
from minigpt4.common.fields import check_value
from minigpt4.common.sections import device_name

STAGES = ("describe", "fix", "filter", "review", "apply-review", "export")

# The paper's prompt (section 3.2), in the Vicuna format its stage-1 model was asked in.
DESCRIBE_INSTRUCTION = ("<Img><ImageHere></Img>Describe this image in detail. Give as many details as possible. "
                        "Say everything you see.")
CONTINUE_INSTRUCTION = "Continue"
PAPER_TEMPLATE = "###Human: {} ###Assistant: "

# The paper's post-processing prompt, verbatim.
FIX_PROMPT = ("Fix the error in the given paragraph. Remove any repeating sentences, meaningless characters, not "
              "English sentences, and so on. Remove unnecessary repetition. Rewrite any incomplete sentences. "
              "Return directly the results without explanation. Return directly the input paragraph if it is "
              "already correct without explanation.")

# Replies the paper drops with hard-coded rules (and close variants seen from chat models).
FAILURE_STRINGS = ["I'm sorry I made a mistake", "I'm sorry, I made a mistake", "I apologize for that",
                   "I apologize for the", "As an AI language model"]

DEFAULTS = {
    "images": None,            # a folder of images, or a brace pattern of webdataset .tar shards
    "work_dir": "curate_work",  # every stage writes its file here
    "num_images": None,        # null: all images; N: N of them drawn at random with `seed`
    "seed": 0,
    "describe": {
        "batch_size": 8,
        "max_new_tokens": 300,
        "num_beams": 1,
        "repetition_penalty": 1.0,
        "template": PAPER_TEMPLATE,
        "prompt": DESCRIBE_INSTRUCTION,
        "continue_prompt": CONTINUE_INSTRUCTION,
        "continue_max_tokens": 80,  # ask "Continue" when the answer has at most this many LLM tokens
        "stop": ["###"],
        "max_image_pixels": 40_000_000,  # larger images (from the header, before decoding) are describe errors
    },
    "fix": {
        "fixer": "rules",      # rules | openai | hf | none
        "prompt": FIX_PROMPT,
        "openai": {
            "base_url": None,          # e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1
            "model": "gpt-3.5-turbo",
            "api_key_env": "OPENAI_API_KEY",  # the NAME of the environment variable holding the key
            "prompt_role": "system",   # system: prompt as system message, paragraph as user message
            "temperature": 0.7,
            "max_tokens": 200,
            "timeout": 60.0,           # seconds per request
            "max_retries": 5,          # further attempts after the first one
            "backoff_initial": 1.0,    # seconds before the first retry, doubled each time
            "backoff_max": 60.0,
            "concurrency": 4,          # requests in flight at once
            "price_per_input_token": None,
            "price_per_output_token": None,
        },
        "hf": {
            "model": None,             # a local Hugging Face causal LM folder
            "device": "cpu",
            "torch_dtype": None,
            "max_new_tokens": 300,
            "batch_size": 4,
        },
    },
    "filter": {
        "min_length": 50,               # characters; shorter texts are rejected
        "already_correct": "keep_original",  # keep_original | reject | keep_reply
        "reject_incomplete": True,      # a fixer reply that says "incomplete" is rejected
        "failure_strings": FAILURE_STRINGS,
        "max_repetition": 0.5,          # share of sentences that repeat an earlier one; more is rejected
        "reject_patterns": [],          # extra regular expressions; a match is rejected
    },
    "review": {
        "edits": None,                  # an edited JSONL: {"key", "text"?, "reject"?, "reason"?} per line
        "max_image_side": 384,          # images are inlined in the page at most this size
    },
    "export": {
        "out": None,                    # default: <work_dir>/cc_sbu_align
        "jpeg_quality": 95,
    },
}

CHOICES = {"fix.fixer": ("rules", "openai", "hf", "none"),
           "fix.openai.prompt_role": ("system", "user"),
           "filter.already_correct": ("keep_original", "reject", "keep_reply")}
MIN_ONE = ("describe.batch_size", "describe.max_new_tokens", "describe.num_beams", "describe.max_image_pixels",
           "fix.openai.concurrency",
           "fix.openai.max_tokens", "fix.hf.max_new_tokens", "fix.hf.batch_size", "review.max_image_side")
# ranges of the other numbers, as fields.key() takes them (a null, where allowed, is not checked)
BOUNDS = {"describe.repetition_penalty": {"gt": 0}, "describe.continue_max_tokens": {"ge": 0},
          "fix.openai.temperature": {"ge": 0, "le": 2}, "fix.openai.timeout": {"gt": 0},
          "fix.openai.max_retries": {"ge": 0}, "fix.openai.backoff_initial": {"ge": 0},
          "fix.openai.backoff_max": {"ge": 0}, "fix.openai.price_per_input_token": {"ge": 0},
          "fix.openai.price_per_output_token": {"ge": 0}, "filter.min_length": {"ge": 0},
          "filter.max_repetition": {"ge": 0, "le": 1}, "export.jpeg_quality": {"ge": 1, "le": 100}}
NULLABLE = ("images", "num_images", "fix.openai.base_url", "fix.openai.price_per_input_token",
            "fix.openai.price_per_output_token", "fix.hf.model", "fix.hf.torch_dtype", "review.edits", "export.out")


class CurateError(UserError, ValueError):
    """A problem with the curation config, its inputs or its files; printed as one line naming the key."""


def _check(node, defaults: dict, prefix: str) -> None:
    for key in node.keys():
        path = f"curate.{prefix}{key}"
        if key not in defaults:
            close = difflib.get_close_matches(str(key), list(defaults), n=1, cutoff=0.6)
            hint = f" (did you mean {prefix + close[0]!r}?)" if close else f"; known: {', '.join(defaults)}"
            raise CurateError(f"unknown key {path}{hint}")
        default, value = defaults[key], node[key]
        if isinstance(default, dict):
            if not isinstance(value, DictConfig):
                raise CurateError(f"{path} must be a mapping, got {value!r}")
            _check(value, default, f"{prefix}{key}.")
            continue
        if value is None:
            if f"{prefix}{key}" not in NULLABLE and default is not None:
                raise CurateError(f"{path} may not be null")
            continue
        if isinstance(default, list):
            ok = isinstance(value, ListConfig) and all(isinstance(v, str) for v in value)
            want = "a list of strings"
        elif isinstance(default, bool):
            ok, want = isinstance(value, bool), "true or false"
        elif isinstance(default, int) or key == "num_images":
            ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif isinstance(default, float) or key.startswith("price_"):
            ok, want = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        else:
            ok, want = isinstance(value, str), "a string"
        if not ok:
            raise CurateError(f"{path} must be {want}, got {value!r}")


def validate(cfg: DictConfig) -> DictConfig:
    _check(cfg, DEFAULTS, "")
    for key, allowed in CHOICES.items():
        if OmegaConf.select(cfg, key) not in allowed:
            raise CurateError(f"curate.{key} must be one of {', '.join(allowed)}, got {OmegaConf.select(cfg, key)!r}")
    for key in MIN_ONE:
        if OmegaConf.select(cfg, key) < 1:
            raise CurateError(f"curate.{key} must be at least 1, got {OmegaConf.select(cfg, key)}")
    for key, bounds in BOUNDS.items():
        value = OmegaConf.select(cfg, key)
        if value is not None:
            try:
                check_value(f"curate.{key}", value, (object,), bounds)
            except ConfigError as exc:
                raise CurateError(str(exc)) from None
    problem = device_name(cfg.fix.hf.device)
    if problem:
        raise CurateError(f"curate.fix.hf.device: {problem}")
    if cfg.num_images is not None and cfg.num_images < 1:
        raise CurateError(f"curate.num_images must be at least 1 (or null for all), got {cfg.num_images}")
    if cfg.describe.prompt.count("<ImageHere>") != 1:
        raise CurateError("curate.describe.prompt must contain <ImageHere> exactly once")
    if "{}" not in cfg.describe.template:
        raise CurateError("curate.describe.template must contain {} where the message goes")
    return cfg


def _drop_none(tree: dict) -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            value = _drop_none(value)
            if value:
                out[key] = value
        elif value is not None:
            out[key] = value
    return out


def load(path: str | Path | None = None, options=None, overrides: dict | None = None) -> DictConfig:
    """Defaults <- the ``curate:`` section of ``path`` <- ``options`` (``curate.key=value`` or ``key=value``)
    <- ``overrides`` (a nested mapping, e.g. from command-line flags; ``None`` values are ignored)."""
    cfg = OmegaConf.create(DEFAULTS)
    if path is not None:
        try:
            user = load_yaml(path, "--config", "a top-level 'curate:' section")
        except ConfigError as exc:
            raise CurateError(str(exc)) from None
        if "curate" not in user:
            raise CurateError(f"--config {path}: expected a top-level 'curate:' section")
        extra = [k for k in user.keys() if k != "curate"]
        if extra:
            raise CurateError(f"--config {path}: unknown top-level key {extra[0]!r} (only 'curate:' belongs here; "
                              "the model goes in --cfg-path)")
        if user.curate is not None and not isinstance(user.curate, DictConfig):
            raise CurateError(f"--config {path}: curate must be a mapping of keys, got {user.curate!r}")
        _check(user.curate or OmegaConf.create(), DEFAULTS, "")
        cfg = OmegaConf.merge(cfg, user.curate or {})
    opts = [o[len("curate."):] if o.startswith("curate.") else o for o in options or []]
    if opts:
        parsed = parse_options(opts, require_section=False)
        _check(parsed, DEFAULTS, "")
        cfg = OmegaConf.merge(cfg, parsed)
    given = _drop_none(overrides or {})
    if given:
        _check(OmegaConf.create(given), DEFAULTS, "")
        cfg = OmegaConf.merge(cfg, given)
    return validate(cfg)
