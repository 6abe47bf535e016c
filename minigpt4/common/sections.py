"""The config sections MiniGPT-4 reads: every key's type, default, range and one-line help, in one place.

``ModelConfig`` (``model:``), ``RunConfig`` (``run:``) and ``DatasetConfig`` (``datasets.<name>:``) are the
single owners of their defaults: consumers read ``section.key`` from the typed node :func:`fields.typed`
returns, never ``cfg.get(key, default)``. Processor settings are declared beside each processor class
(``Config`` attribute). Another model class or dataset builder declares its own section as the class
attribute ``CONFIG`` (a dataclass, e.g. ``minigpt4.gpt4image``) or ``CONFIG_KEYS`` (a ``{key: types}``
table). List every key with ``python -m minigpt4.config_keys``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from minigpt4.common.fields import ConfigError, check_section, key, suggest
from minigpt4.images import DEFAULT_MAX_IMAGE_PIXELS

DEVICE = re.compile(r"^(cpu|mps|meta|(cuda|xpu)(:\d+)?)$")
DTYPES = ("auto", "float32", "fp32", "float16", "fp16", "bfloat16", "bf16")
PROCESSOR_SPLITS = ("train", "eval")
NoneType = type(None)


def device_name(value) -> str | None:
    if not isinstance(value, str) or not DEVICE.match(value):
        return f"{value!r} is not a device this library runs on; use cpu, cuda, cuda:N or mps"
    return None


def prompt_file(value) -> str | None:
    from minigpt4.common.config import resolve_path

    if value and resolve_path(value).is_dir():
        return f"{value!r} is a folder; give the text file of instructions (one per line, containing <ImageHere>)"
    if value and not resolve_path(value).is_file():
        return f"no such file {value!r} (a text file of instructions, one per line, containing <ImageHere>)"
    return None


def _hf_config_keys(value, class_name: str) -> str | None:
    """Keys of ``vit_config`` / ``qformer_config`` must be fields of the transformers config class, and its
    sizes and counts whole numbers > 0."""
    import transformers

    cls = getattr(transformers, class_name)
    defaults = cls().to_dict()
    for name, v in value.items():
        if name not in defaults:
            return f"unknown key {name!r} for transformers' {class_name}{suggest(name, defaults)}"
        if (name.endswith("_size") or name.startswith("num_")) and isinstance(defaults[name], int):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                return f"{name} must be a whole number > 0, got {v!r}"
    return None


def one_slot(value) -> str | None:
    if value and value.count("{}") != 1:
        return f"{value!r} must contain {{}} exactly once (where the instruction goes)"
    return None


def non_empty_names(value) -> str | None:
    if value is not None and (not value or not all(isinstance(v, str) and v for v in value)):
        return f"{list(value)!r} must be a non-empty list of module names (or null for the default)"
    return None


def folder_name(value) -> str | None:
    text = str(value) if value is not None else None
    if text is not None and (not text or text in (".", "..") or "/" in text or "\\" in text):
        return f"{text!r} must be a plain folder name inside run.output_dir (no '/', not '.' or '..')"
    return None


def vit_keys(value) -> str | None:
    return _hf_config_keys(value, "Blip2VisionConfig") if value else None


def qformer_keys(value) -> str | None:
    return _hf_config_keys(value, "Blip2QFormerConfig") if value else None


@dataclass
class ModelConfig:
    """``model:`` of arch ``minigpt4`` (alias ``mini_gpt4``)."""
    SECTION = "model"
    arch: Optional[str] = key(None, "registered model class: minigpt4 (required)")
    model_type: Optional[str] = key(None, "preset YAML: pretrain_vicuna0 or pretrain_llama2")
    # vision tower
    image_size: int = key(224, "input image side in pixels", ge=1)
    drop_path_rate: float = key(0.0, "accepted for the original's YAMLs; the frozen tower runs without it", ge=0, le=1)
    use_grad_checkpoint: bool = key(False, "gradient checkpointing in the ViT (only when freeze_vit is false)")
    vit_precision: str = key("fp16", "ViT weights in fp16 on CUDA when frozen, else fp32", choices=("fp16", "fp32"))
    freeze_vit: bool = key(True, "keep the ViT frozen")
    freeze_qformer: bool = key(True, "keep the Q-Former and query tokens frozen")
    num_query_token: Optional[int] = key(None, "Q-Former query tokens (default: the HF folder's, else 32)", ge=1)
    has_qformer: bool = key(True, "false: no Q-Former, 4 patch tokens concatenated per image token (Llama-2)")
    vit_ckpt: Optional[str] = key(None, "EVA-ViT-g weights (eva_vit_g.pth)")
    vit_config: Any = key(None, "Blip2VisionConfig overrides (sizes of the ViT)", types=(dict, NoneType),
                          check=vit_keys)
    qformer_config: Any = key(None, "Blip2QFormerConfig overrides (sizes of the Q-Former)",
                              types=(dict, NoneType), check=qformer_keys)
    q_former_model: Optional[str] = key(None, "BLIP-2 weights (.pth) or a Hugging Face BLIP-2 folder")
    feature_cache_size: int = key(0, "vision features kept per image key (0: off; needs a frozen tower)", ge=0)
    # training throughput (minigpt4.models.lm_loss): exact shortcuts, off = the original's computation
    sequence_packing: bool = key(False, "pack the batch's samples into one row (padding-free attention)")
    sequence_packing_row_tokens: int = key(0, "with sequence_packing: rows of at most this many tokens "
                                           "(longer samples get their own row; 0: one row)", ge=0)
    label_logits_only: bool = key(False, "LM head + cross-entropy only where the next token is a label")
    # projection
    ckpt: Optional[str] = key(None, "trained llama_proj weights (.safetensors or the original .pth)")
    # LLM
    llama_model: Optional[str] = key(None, "Hugging Face causal LM folder (Vicuna / Llama-2)")
    device: Optional[str] = key(None, "device of the model (default: run.device, else cuda if available)",
                                check=device_name)
    low_resource: bool = key(False, "8-bit LLM (bitsandbytes, CUDA only)")
    device_8bit: Any = key(0, "GPU of the 8-bit LLM", types=(int, str))
    load_in_4bit: bool = key(False, "4-bit NF4 LLM (bitsandbytes, CUDA only)")
    device_map: Any = key(None, "accelerate placement of the LLM, e.g. auto", types=(str, dict, NoneType))
    torch_dtype: Optional[str] = key(None, "LLM dtype (default: fp16 on CUDA, fp32 on CPU)", choices=DTYPES)
    attn_implementation: Optional[str] = key(None, "transformers attention kernel, e.g. sdpa or eager")
    lora_r: int = key(0, "LoRA rank on the LLM through peft (0: off, only llama_proj trains)", ge=0)
    lora_alpha: Optional[int] = key(None, "LoRA scale alpha (null: equal to lora_r)", gt=0)
    lora_dropout: float = key(0.05, "LoRA dropout, in [0, 1)", ge=0)
    lora_target_modules: Any = key(None, "LLM modules that get LoRA layers (null: q_proj and v_proj)",
                                   types=(list, NoneType), check=non_empty_names)
    chat_template: Optional[str] = key(None, "tokenizer: prompts in the LLM tokenizer's own chat template",
                                       choices=(None, "tokenizer"))
    # text
    prompt: str = key("", "the original's fixed prompt",
                      compat="instructions come from prompt_path and prompt_template")
    prompt_path: Optional[str] = key(None, "instruction file for stage 2 (lines containing <ImageHere>)",
                                     check=prompt_file)
    prompt_template: Optional[str] = key(None, "wraps each instruction, e.g. '###Human: {} ###Assistant: '",
                                         check=one_slot)
    max_txt_len: int = key(32, "longest answer in tokens during training", ge=1)
    end_sym: str = key("\n", "text that ends an answer (training target and stop string)")
    pad_token: str = key("$$", "pad token set on the LLM tokenizer")


@dataclass
class RunConfig:
    """``run:``: training schedule, optimizer, output and processes."""
    SECTION = "run"
    task: Optional[str] = key(None, "registered task: image_text_pretrain (required for training)")
    runner: str = key("runner_base", "registered training loop")
    lr_sched: str = key("linear_warmup_cosine_lr",
                        "registered LR schedule: linear_warmup_cosine_lr or linear_warmup_step_lr")
    init_lr: Optional[float] = key(None, "peak learning rate (required for training)", gt=0)
    min_lr: Optional[float] = key(None, "final learning rate (required for training)", ge=0)
    warmup_lr: Optional[float] = key(None, "learning rate at step 0 of the warmup (null: init_lr)", ge=0)
    warmup_steps: int = key(0, "warmup length in optimizer steps", ge=0)
    lr_decay_rate: Optional[float] = key(None, "per-epoch factor of linear_warmup_step_lr", gt=0)
    faithful_lr_schedule: bool = key(False, "the original's per-epoch cosine with its restarts")
    weight_decay: float = key(0.05, "AdamW/SGD weight decay (not on biases and norms)", ge=0)
    beta2: float = key(0.999, "AdamW beta2", gt=0, le=1)
    optimizer: str = key("adamw", "adamw or sgd", choices=("adamw", "sgd"))
    momentum: float = key(0.9, "SGD momentum", ge=0, lt=1)
    max_epoch: Optional[int] = key(None, "number of epochs (required for training)", ge=1)
    iters_per_epoch: Optional[int] = key(None, "steps per epoch (required for training)", ge=1)
    batch_size_train: Optional[int] = key(None, "batch size per process (required for training)", ge=1)
    batch_size_eval: int = key(64, "batch size of the validation pass (GPT4Image)", ge=1)
    num_workers: int = key(0, "DataLoader worker processes per training process", ge=0)
    accum_grad_iters: int = key(1, "batches per optimizer step", ge=1)
    max_grad_norm: Optional[float] = key(None, "clip the gradient norm (null: no clipping)", gt=0)
    seed: int = key(42, "random seed (each process adds its rank)")
    output_dir: str = key("output", "runs go to output_dir/<job_id>")
    job_id: Optional[str] = key(None, "job folder name (default: a timestamp)", check=folder_name)
    amp: bool = key(False, "mixed precision on CUDA (ignored elsewhere)")
    amp_dtype: str = key("float16", "AMP dtype", choices=("float16", "fp16", "bfloat16", "bf16"))
    resume_ckpt_path: Optional[str] = key(None, "resume file or job folder to continue (same as --resume PATH)")
    save_every: Optional[int] = key(None, "also save every N steps (a multiple of accum_grad_iters)", ge=1)
    log_freq: int = key(50, "log every N steps", ge=1)
    tensorboard: bool = key(True, "write TensorBoard event files")
    progress_bar: bool = key(True, "show a progress bar on the main process")
    max_seconds: Optional[float] = key(None, "stop with a checkpoint after this many seconds (0: at the first step)",
                                       ge=0)
    threads: Optional[int] = key(None, "torch CPU threads per process", ge=1)
    device: Optional[str] = key(None, "cpu, cuda or cuda:N (default: cuda if available)", check=device_name)
    parallel: str = key("ddp", "ddp: every process holds the whole model; fsdp: FSDP2 shards it by decoder layer",
                        choices=("ddp", "fsdp"))
    fsdp_shard_vision: Any = key("auto", "with fsdp, also shard the vision tower's layers (auto: above 100M params)",
                                 types=(bool, str), check=lambda v: None if isinstance(v, bool) or v == "auto"
                                 else f"must be true, false or auto, got {v!r}")
    distributed: bool = key(False, "join torchrun's / SLURM's process group when launched by one")
    dist_url: str = key("env://", "process-group init method")
    dist_backend: Optional[str] = key(None, "nccl, gloo or mpi (default: nccl on CUDA, gloo on CPU)",
                                      choices=("nccl", "gloo", "mpi"))
    evaluate: bool = key(False, "the original's evaluation switch", compat="MiniGPT-4 training has no evaluation split")
    wandb_log: bool = key(False, "the original's W&B switch", compat="metrics go to TensorBoard and log.txt")
    train_splits: Any = key(["train"], "the original's split list", types=(list, NoneType),
                            compat="every dataset block trains on its 'train' split")
    valid_splits: Any = key(None, "the original's split list", types=(list, NoneType), compat="no evaluation split")
    test_splits: Any = key(None, "the original's split list", types=(list, NoneType), compat="no evaluation split")
    world_size: int = key(1, "the original's process count", compat="the process count comes from torchrun")
    rank: Optional[int] = key(None, "the original's rank", compat="the rank comes from torchrun")
    gpu: Optional[int] = key(None, "the original's GPU index", compat="each process takes LOCAL_RANK's GPU")
    job_name: Optional[str] = key(None, "the original's job name", compat="the folder name is job_id")

    @staticmethod
    def check_together(c: dict) -> str | None:
        if c.get("init_lr") is not None and c.get("min_lr") is not None and c["min_lr"] > c["init_lr"]:
            return (f"min_lr {c['min_lr']} must be <= init_lr {c['init_lr']} (the schedule decays from init_lr "
                    "to min_lr)")
        return None


def processor_entries(section: str, value) -> None:
    """``{train: {name: ..., **settings}, eval: {...}}``: split names, registered processor names and each
    processor's own keys (its ``Config`` dataclass)."""
    from minigpt4.common.registry import registry

    if not isinstance(value, dict):
        raise ConfigError(f"{section} must be a mapping of split (train/eval) -> processor, got {value!r}")
    for split, entry in value.items():
        where = f"{section}.{split}"
        if split not in PROCESSOR_SPLITS:
            raise ConfigError(f"unknown key {where}{suggest(str(split), PROCESSOR_SPLITS)}; use train or eval")
        if entry is None:
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ConfigError(f"{where} must be a mapping with a processor name, e.g. "
                              f"{{name: blip2_image_eval, image_size: 224}}, got {entry!r}")
        known = registry.mapping["processor_name_mapping"]
        if entry["name"] not in known:
            raise ConfigError(f"{where}.name: unknown processor {entry['name']!r}{suggest(entry['name'], known)}; "
                              f"known: {sorted(known)}")
        settings = {k: v for k, v in entry.items() if k != "name"}
        config = getattr(known[entry["name"]], "Config", None)
        if config is not None:
            check_section(where, settings, config)


@dataclass
class BuildInfo:
    storage: Any = key(None, "shards (brace pattern, glob, folder of .tar, or a list) or an align folder",
                       types=(str, list, NoneType))


@dataclass
class DatasetConfig:
    """``datasets.<name>:`` for laion, cc_sbu and cc_sbu_align."""
    type: str = key("default", "which default YAML of the builder to start from")
    data_type: Optional[str] = key(None, "the original's data type", compat="the builder decides what it reads")
    build_info: BuildInfo = key(BuildInfo(), "where the data is")
    vis_processor: Any = key(None, "image processor per split: {train: {name: ..., image_size: ...}}",
                             types=(dict, NoneType))
    text_processor: Any = key(None, "caption processor per split: {train: {name: blip_caption}}",
                              types=(dict, NoneType))
    sample_ratio: float = key(1.0, "relative sampling weight among datasets", gt=0)
    batch_size: Optional[int] = key(None, "batch size of this dataset (default: run.batch_size_train)", ge=1)
    resampled: bool = key(True, "sample shards with replacement forever (false: one pass per epoch)")
    shuffle_buffer: int = key(1000, "webdataset shuffle buffer in samples (0: no shuffle)", ge=0)
    num_workers: Optional[int] = key(None, "DataLoader workers of this dataset (default: run.num_workers)", ge=0)
    max_image_pixels: Optional[int] = key(DEFAULT_MAX_IMAGE_PIXELS, "refuse larger images (null: Pillow's own limit)",
                                          ge=1)
    feature_store: Optional[str] = key(None, "folder of python -m minigpt4.features extract (null: read pixels)")


def check_dataset(section: str, cfg, cls, warn_compat: bool = False) -> None:
    """A dataset block: its declared keys, then its processor entries."""
    from minigpt4.common.fields import plain

    check_section(section, cfg, cls, warn_compat=warn_compat)
    if cfg is None:
        return
    for name in ("vis_processor", "text_processor"):
        value = plain(cfg.get(name)) if name in cfg else None
        if value is not None:
            processor_entries(f"{section}.{name}", value)
