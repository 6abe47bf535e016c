"""Fold a LoRA checkpoint's adapters into the LLM and write a plain Hugging Face LLM folder.

    python -m minigpt4.lora_export --cfg-path eval_configs/tiny_eval_lora.yaml --tiny-world tiny_world \\
        --out merged_llm

The config names the base LLM (``model.llama_model``), the checkpoint (``model.ckpt``, holding ``llama_proj``
and the adapters) and the LoRA keys it was trained with. OUT receives the merged LLM and its tokenizer
(``save_pretrained``) and ``projection.safetensors`` (+ ``.json``), the checkpoint's ``llama_proj`` alone.
Chat with them without LoRA: ``--options model.llama_model=OUT model.ckpt=OUT/projection.safetensors
model.lora_r=0``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from minigpt4.errors import out_folder, path_arg, user_errors
from minigpt4 import inference

PROJECTION_FILE = "projection.safetensors"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m minigpt4.lora_export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    inference.add_model_args(parser)
    parser.add_argument("--out", required=True, type=path_arg,
                        help="folder for the merged LLM (created; must be empty)")
    return parser.parse_args(argv)


def check_out(out: Path) -> None:
    """``--out`` must be a new or empty folder."""
    out_folder(out, "--out")
    if out.exists() and any(out.iterdir()):
        raise inference.UsageError(f"--out {out} is not empty")


def export(model, out: Path) -> Path:
    """Write ``model``'s LLM with its adapters merged, its tokenizer and its ``llama_proj`` into ``out``.
    The model's LLM is changed in place (adapters folded in and removed)."""
    from minigpt4.models import lora as lora_io
    from minigpt4.models.checkpoint import save_trainable

    if model.lora is None:
        raise inference.UsageError("model.lora_r is not set: there are no adapters to merge")
    if lora_io.adapters_at_start(model.adapters):
        raise inference.UsageError("model.ckpt holds no trained LoRA adapters (every lora_B is still 0): the "
                                   "export would be the base LLM unchanged; give the checkpoint of a LoRA run")
    check_out(out)
    out_folder(out, "--out", create=True)
    meta = {**model.checkpoint_meta(), "merged_lora": model.lora.to_meta()}
    meta.pop("lora")
    projection = {k: v for k, v in model.trainable_state_dict().items() if k.startswith("llama_proj.")}
    meta["keys"] = sorted(projection)
    merged = lora_io.merge_into_llm(model._lora_tuner[0])
    merged.save_pretrained(str(out))
    model.llama_tokenizer.save_pretrained(str(out))
    save_trainable(out / PROJECTION_FILE, projection, meta)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    with user_errors("python -m minigpt4.lora_export"):
        check_out(args.out)  # before the model loads
        _, model, _, _ = inference.load_model(args)
        export(model, args.out)
    print(f"merged LLM: {args.out}; projection: {args.out / PROJECTION_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
