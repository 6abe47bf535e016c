"""The ``hf`` fixer: a local Hugging Face causal LM folder, greedy, batched.

The fix prompt goes through the tokenizer's chat template when it has one (the prompt as the system
message and the paragraph as the user message, or both in one user message when the template has no
system role); otherwise the plain text ``<prompt>\n\nParagraph: <text>\n\nFixed paragraph:`` is used.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from minigpt4.curate.config import CurateError
from minigpt4.curate.fixers import Fixer, FixResult

log = logging.getLogger(__name__)
FOLDER = "a local Hugging Face causal-LM folder (config.json, weights, tokenizer files)"


def check_model(cfg) -> Path:
    """``curate.fix.hf.model`` is a causal-LM folder transformers can load (small files and weight headers
    only); a one-line :class:`CurateError` naming the key otherwise. The pipeline runs it before any stage."""
    from minigpt4.models.checkpoint import CheckpointError, require_file
    from minigpt4.models.hf_folder import check_causal_lm_folder

    if not cfg.model:
        raise CurateError(f"curate.fix.hf.model is not set; it must point at {FOLDER}")
    try:
        folder = require_file(cfg.model, "model", section="curate.fix.hf")
        if not folder.is_dir():
            raise CurateError(f"curate.fix.hf.model {folder}: is a file; it must point at {FOLDER}")
        check_causal_lm_folder(folder, "curate.fix.hf.model")
    except CheckpointError as exc:
        raise CurateError(str(exc)) from None
    return folder


class HFFixer(Fixer):
    name = "hf"

    def __init__(self, cfg, prompt: str):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from minigpt4.models.llm import parse_dtype

        folder = check_model(cfg)
        try:
            device = torch.device(cfg.device)
        except RuntimeError as exc:
            raise CurateError(f"curate.fix.hf.device={cfg.device}: {exc}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise CurateError(f"curate.fix.hf.device={cfg.device}: no CUDA device is available here")
        try:
            dtype = parse_dtype(cfg.torch_dtype, device)
        except ValueError as exc:
            raise CurateError(f"curate.fix.hf.torch_dtype: {exc}") from None
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
        self.model.to(device).eval().requires_grad_(False)
        self.cfg, self.prompt, self.device = cfg, prompt, device
        self.counts = {"prompt_tokens": 0, "completion_tokens": 0, "failed_rows": 0}

    def render(self, text: str) -> str:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            system = [{"role": "system", "content": self.prompt}, {"role": "user", "content": text}]
            try:
                return tok.apply_chat_template(system, tokenize=False, add_generation_prompt=True)
            except Exception:  # noqa: BLE001  (templates that refuse a system role raise their own errors)
                joined = [{"role": "user", "content": f"{self.prompt}\n\n{text}"}]
                return tok.apply_chat_template(joined, tokenize=False, add_generation_prompt=True)
        return f"{self.prompt}\n\nParagraph: {text}\n\nFixed paragraph:"

    @torch.no_grad()
    def _generate(self, texts: list[str]) -> list[str]:
        prompts = [self.render(t) for t in texts]
        chat = bool(getattr(self.tokenizer, "chat_template", None))
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=not chat)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        out = self.model.generate(**batch, max_new_tokens=int(self.cfg.max_new_tokens), do_sample=False,
                                  temperature=None, top_p=None, top_k=None,
                                  pad_token_id=self.tokenizer.pad_token_id)
        new = out[:, batch["input_ids"].shape[1]:]
        self.counts["prompt_tokens"] += int(batch["attention_mask"].sum())
        eos = self.tokenizer.eos_token_id
        self.counts["completion_tokens"] += int(sum((row != eos).sum() for row in new))
        return [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]

    def fix(self, items):
        items = list(items)
        size = int(self.cfg.batch_size)
        for start in range(0, len(items), size):
            chunk = items[start:start + size]
            replies = self._generate([text for _, text in chunk])
            for (key, _), reply in zip(chunk, replies):
                if reply:
                    yield FixResult(key, reply, reply)
                else:
                    self.counts["failed_rows"] += 1
                    yield FixResult(key, error="empty reply")

    def stats(self) -> dict:
        return dict(self.counts)
