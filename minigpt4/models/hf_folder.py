"""Checks of a local Hugging Face model folder (``model.llama_model``, a BLIP-2 ``model.q_former_model``) that
read only small files and weight headers, so a folder that cannot load is a one-line :class:`CheckpointError`
naming the key, the folder and the broken part, before transformers starts loading anything:

config.json (missing, not JSON, no or unknown ``model_type``, not the expected kind of model), the weights
(none, a shard the index names but that is missing, a corrupt or truncated ``model.safetensors``, a
``pytorch_model.bin`` that is not a plain tensor file) and the tokenizer (no tokenizer files, a JSON file that
does not parse, a ``tokenizer.model`` that is not a SentencePiece model, an unknown ``tokenizer_class``).
"""
from __future__ import annotations

from pathlib import Path

from minigpt4.models.weight_files import CheckpointError, check_safetensors, label, load_torch, read_json

# (single file, index of shards), in the order transformers prefers them
WEIGHT_LAYOUTS = (("model.safetensors", "model.safetensors.index.json"),
                  ("pytorch_model.bin", "pytorch_model.bin.index.json"))
TOKENIZER_JSON = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.tiktoken")


def read_config(folder: Path, name: str) -> dict:
    file = folder / "config.json"
    if not file.is_file():
        raise CheckpointError(f"{name}: no config.json; not a Hugging Face model folder")
    config = read_json(file, name)
    model_type = config.get("model_type")
    if not model_type:
        raise CheckpointError(f"{name}: config.json has no model_type")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if model_type not in CONFIG_MAPPING_NAMES:
        raise CheckpointError(f"{name}: config.json has model_type {model_type!r}, which this transformers "
                              "version does not know (a typo, or a model newer than transformers)")
    return config


def weight_files(folder: Path, name: str) -> list[Path]:
    """The weight files transformers would read: one file, or the shards an index names (all present)."""
    for single, index in WEIGHT_LAYOUTS:
        if (folder / single).exists():
            return [folder / single]
        if (folder / index).exists():
            weight_map = read_json(folder / index, name).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{name}: {index} has no weight_map")
            shards = [folder / s for s in sorted(set(map(str, weight_map.values())))]
            missing = [s.name for s in shards if not s.exists()]
            if missing:
                raise CheckpointError(f"{name}: {index} names {len(missing)} shard(s) that are missing, e.g. "
                                      f"{missing[0]}")
            return shards
    raise CheckpointError(f"{name}: no weights (model.safetensors, pytorch_model.bin, or a sharded index of "
                          "either); copy the model's weight files into the folder")


def check_weight_file(file: Path, key: str) -> list[str]:
    """Header check of one weight file (tensor data is not read); returns its keys."""
    if file.suffix == ".safetensors":
        return list(check_safetensors(file, key))
    raw = load_torch(file, key, mmap=True)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{label(file, key)}: expected a state dict, got {type(raw).__name__}")
    return list(raw)


def check_tokenizer(folder: Path, name: str) -> None:
    present = [f for f in TOKENIZER_FILES if (folder / f).is_file()]
    if not present:
        raise CheckpointError(f"{name}: no tokenizer files (one of {', '.join(TOKENIZER_FILES[:4])}); copy the "
                              "model's tokenizer into the folder")
    configs = {f: read_json(folder / f, name) for f in TOKENIZER_JSON if (folder / f).is_file()}
    if "tokenizer.json" not in present and "tokenizer.model" in present:
        _check_sentencepiece(folder / "tokenizer.model", name)
    cls = configs.get("tokenizer_config.json", {}).get("tokenizer_class")
    if cls and not _known_tokenizer(cls):
        raise CheckpointError(f"{name}: tokenizer_config.json names tokenizer_class {cls!r}, which transformers "
                              "does not have")


def _check_sentencepiece(file: Path, name: str) -> None:
    try:
        import sentencepiece
    except ImportError:  # transformers reports it itself
        return
    try:
        sentencepiece.SentencePieceProcessor(model_file=str(file))
    except (RuntimeError, OSError) as exc:
        raise CheckpointError(f"{name}: tokenizer.model is not a SentencePiece model "
                              f"({str(exc).strip().splitlines()[0][:120]})") from None


def _known_tokenizer(cls: str) -> bool:
    import transformers
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    for candidate in (cls, cls.removesuffix("Fast")):
        if getattr(transformers, candidate, None) is not None or tokenizer_class_from_name(candidate) is not None:
            return True
    return False


def check_causal_lm_folder(folder: Path, key: str = "model.llama_model") -> dict:
    """A causal-LM folder for ``AutoModelForCausalLM`` + ``AutoTokenizer``; returns its config.json. Messages
    name ``key`` and the folder (or the file inside it)."""
    name = label(folder, key)
    config = read_config(folder, name)
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if config["model_type"] not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise CheckpointError(f"{name}: model_type {config['model_type']!r} is not a causal language model "
                              "(AutoModelForCausalLM cannot load it)")
    for file in weight_files(folder, name):
        check_weight_file(file, key)
    check_tokenizer(folder, name)
    return config


def check_blip2_folder(folder: Path, key: str = "model.q_former_model") -> dict:
    """A Hugging Face BLIP-2 folder read for its ``vision_model``/``qformer``/``query_tokens`` weights (any
    ``*.safetensors``, else ``pytorch_model*.bin``, as :func:`minigpt4.models.convert.read_hf_blip2_folder`)."""
    name = label(folder, key)
    config = read_config(folder, name)
    if config["model_type"] != "blip-2":
        raise CheckpointError(f"{name}: config.json has model_type {config['model_type']!r}; a BLIP-2 folder "
                              "has 'blip-2'")
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise CheckpointError(f"{name}: no weights (*.safetensors or pytorch_model*.bin)")
    keys = [k for file in files for k in check_weight_file(file, key)]
    if not any(k.startswith("qformer.") for k in keys):
        raise CheckpointError(f"{name}: its weights hold no qformer.* tensors; not a BLIP-2 checkpoint")
    return config
