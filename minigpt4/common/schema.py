"""Known config keys and their types, per section. One place, so validation and docs agree.

A type spec is a tuple of accepted Python types; ``None`` in the tuple means the key may be null.
Sections that are free-form mappings (``vit_config``, processors, ``build_info``) are typed ``dict``.
``MODEL_KEYS`` / ``DATASET_KEYS`` are MiniGPT-4's; another model class or dataset builder declares its own
table as the class attribute ``CONFIG_KEYS`` (see ``minigpt4.gpt4image``).
"""
from __future__ import annotations

NUM = (int, float)
OPT_STR = (str, type(None))
OPT_NUM = (int, float, type(None))
OPT_INT = (int, type(None))

TOP_LEVEL = ("model", "preprocess", "datasets", "run")

MODEL_KEYS: dict[str, tuple] = {
    "arch": (str,),
    "model_type": OPT_STR,
    # vision tower
    "image_size": (int,),
    "drop_path_rate": NUM,
    "use_grad_checkpoint": (bool,),
    "vit_precision": (str,),
    "freeze_vit": (bool,),
    "freeze_qformer": (bool,),
    "num_query_token": (int,),
    "has_qformer": (bool,),
    "vit_ckpt": OPT_STR,
    "vit_config": (dict, type(None)),
    "qformer_config": (dict, type(None)),
    "q_former_model": OPT_STR,
    "feature_cache_size": (int,),
    # projection checkpoint
    "ckpt": OPT_STR,
    # LLM
    "llama_model": (str,),
    "device": OPT_STR,
    "low_resource": (bool,),
    "device_8bit": (int, str),
    "load_in_4bit": (bool,),
    "device_map": (str, dict, type(None)),
    "torch_dtype": OPT_STR,
    "attn_implementation": OPT_STR,
    "lora_r": (int,),
    "lora_alpha": (int,),
    "lora_dropout": NUM,
    "lora_target_modules": (list,),
    # text side
    "prompt": (str,),
    "prompt_path": OPT_STR,
    "prompt_template": (str,),
    "max_txt_len": (int,),
    "end_sym": (str,),
    "pad_token": (str,),
}

DATASET_KEYS: dict[str, tuple] = {
    "type": (str,),
    "data_type": (str,),
    "build_info": (dict,),
    "vis_processor": (dict,),
    "text_processor": (dict,),
    "sample_ratio": NUM,
    "batch_size": (int,),
    "resampled": (bool,),
    "shuffle_buffer": (int,),
    "num_workers": (int,),
    "max_image_pixels": OPT_INT,
}

RUN_KEYS: dict[str, tuple] = {
    "task": (str,),
    "runner": (str,),
    "lr_sched": (str,),
    "init_lr": NUM,
    "min_lr": NUM,
    "warmup_lr": NUM,
    "warmup_steps": (int,),
    "lr_decay_rate": OPT_NUM,
    "faithful_lr_schedule": (bool,),
    "weight_decay": NUM,
    "beta2": NUM,
    "optimizer": (str,),
    "momentum": NUM,
    "max_epoch": (int,),
    "iters_per_epoch": (int,),
    "batch_size_train": (int,),
    "batch_size_eval": (int,),
    "num_workers": (int,),
    "accum_grad_iters": (int,),
    "max_grad_norm": OPT_NUM,
    "seed": (int,),
    "output_dir": (str,),
    "job_id": OPT_STR,
    "amp": (bool,),
    "amp_dtype": (str,),
    "resume_ckpt_path": OPT_STR,
    "save_every": OPT_INT,
    "log_freq": (int,),
    "tensorboard": (bool,),
    "progress_bar": (bool,),
    "evaluate": (bool,),
    "train_splits": (list,),
    "valid_splits": (list,),
    "test_splits": (list,),
    "device": (str,),
    "world_size": (int,),
    "dist_url": (str,),
    "dist_backend": OPT_STR,
    "distributed": (bool,),
    "parallel": (str,),
    "fsdp_shard_vision": (bool, str),
    "gpu": OPT_INT,
    "rank": OPT_INT,
    "wandb_log": (bool,),
    "job_name": (str,),
    "threads": OPT_INT,
    "max_seconds": OPT_NUM,
}
