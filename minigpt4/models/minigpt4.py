"""MiniGPT-4: frozen vision tower -> trainable ``llama_proj`` -> frozen causal LM.

Read top to bottom: ``from_config`` builds and loads the parts, ``encode_img`` turns pixels into LLM
embeddings, ``forward`` computes the training loss with the original's exact sequence layout, and
``generate`` decodes a batch of prompts (left-padded, per-row stopping on ``end_sym``).
"""
from __future__ import annotations

import contextlib
import logging
import random

import torch
from torch import nn
from torch.nn import functional as F

from minigpt4.common.dist import default_device
from minigpt4.common.fields import typed
from minigpt4.common.registry import registry
from minigpt4.common.sections import ModelConfig
from minigpt4.errors import ConfigError
from minigpt4.models import checkpoint as ckpt_io
from minigpt4.models import lora as lora_io
from minigpt4.models import lm_loss
from minigpt4.models import prompting as P
from minigpt4.models.chat_template import chat_template_from_config
from minigpt4.models.feature_cache import FeatureCache
from minigpt4.models.llm import load_llm, load_tokenizer, parse_dtype
from minigpt4.models.vision import VisionTower, build_vision_tower  # noqa: F401  (build_vision_tower re-exported)

log = logging.getLogger(__name__)


@registry.register_model("mini_gpt4")
@registry.register_model("minigpt4")
class MiniGPT4(nn.Module):
    PRETRAINED_MODEL_CONFIG_DICT = {
        "pretrain_vicuna0": "configs/models/minigpt4_vicuna0.yaml",
        "pretrain_llama2": "configs/models/minigpt4_llama2.yaml",
    }

    def __init__(self, vision: VisionTower, llama_model, llama_tokenizer, *, prompt_list=(), max_txt_len=32,
                 end_sym="\n", freeze_vit=True, freeze_qformer=True):
        super().__init__()
        self.vision = vision
        self.llama_model = llama_model
        self.llama_tokenizer = llama_tokenizer
        hidden = llama_model.get_input_embeddings().embedding_dim
        self.llama_proj = nn.Linear(vision.feature_dim, hidden)
        self.prompt_list = list(prompt_list)
        self.max_txt_len = max_txt_len
        self.end_sym = end_sym
        self.frozen = [llama_model]
        if freeze_vit:
            self.frozen.append(vision.vision_model)
        if vision.has_qformer and freeze_qformer:
            self.frozen += [vision.qformer]
            vision.query_tokens.requires_grad_(False)
        for module in self.frozen:
            module.requires_grad_(False)
        self._token_cache: dict[str, list[int]] = {}
        self.feature_cache: FeatureCache | None = None
        self.lora: lora_io.LoraSettings | None = None  # set by add_lora
        self.adapters: list[nn.Module] = []
        self.chat_template = None  # a TokenizerTemplate: prompts rendered by the LLM tokenizer's own template
        self.sequence_packing = False  # see minigpt4.models.lm_loss (set by from_config)
        self.packing_row_tokens = 0
        self.label_logits_only = False
        self.train(False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, cfg, device: str | torch.device | None = None) -> "MiniGPT4":
        cfg = typed(ModelConfig, cfg, "model")
        if cfg.sequence_packing_row_tokens and not cfg.sequence_packing:
            raise ConfigError("model.sequence_packing_row_tokens is set but model.sequence_packing is false; "
                              "set sequence_packing: true or leave the row size at 0")
        device = torch.device(device or cfg.device or default_device())
        lora = lora_io.lora_settings(cfg, device)
        llm_dtype = parse_dtype(cfg.torch_dtype, device)
        tokenizer = load_tokenizer(cfg.llama_model, cfg.pad_token)
        llm = load_llm(cfg.llama_model, device=device, dtype=llm_dtype, low_resource=cfg.low_resource,
                       device_8bit=cfg.device_8bit, load_in_4bit=cfg.load_in_4bit,
                       device_map=cfg.device_map, attn_implementation=cfg.attn_implementation)
        vision = build_vision_tower(cfg)
        template = chat_template_from_config(cfg.chat_template, tokenizer)
        prompt_list = []
        if cfg.prompt_path:
            from minigpt4.common.config import resolve_path

            prompt_list = P.load_prompt_list(resolve_path(cfg.prompt_path),
                                             "{}" if template else (cfg.prompt_template or "{}"))
            prompt_list = [template.user_prompt(p) for p in prompt_list] if template else prompt_list
            log.info("loaded %d training prompts from %s", len(prompt_list), cfg.prompt_path)
        model = cls(vision, llm, tokenizer, prompt_list=prompt_list, max_txt_len=cfg.max_txt_len,
                    end_sym=template.end_of_turn if template else cfg.end_sym,
                    freeze_vit=cfg.freeze_vit, freeze_qformer=cfg.freeze_qformer)
        model.chat_template = template
        if lora is not None:
            model.add_lora(lora)
        if cfg.ckpt:
            model.load_projection(ckpt_io.require_file(cfg.ckpt, "ckpt"))
        if cfg.feature_cache_size:
            if not model.vision_frozen:
                raise ConfigError("model.feature_cache_size needs a frozen vision tower (freeze_vit, freeze_qformer)")
            model.feature_cache = FeatureCache(cfg.feature_cache_size)
        model.sequence_packing = cfg.sequence_packing
        model.packing_row_tokens = cfg.sequence_packing_row_tokens
        model.label_logits_only = cfg.label_logits_only
        if model.label_logits_only:
            lm_loss.check_label_logits_only(llm)
        place_vision_tower(model.vision, cfg, device)
        model.llama_proj.to(device)
        return model

    def add_lora(self, settings: "lora_io.LoraSettings") -> None:
        """LoRA adapters on the frozen LLM (see ``minigpt4.models.lora``); they train with ``llama_proj``."""
        self._lora_tuner = [lora_io.add_lora(self.llama_model, settings)]  # a list: not a registered submodule
        self.lora = settings
        self.adapters = lora_io.adapter_layers(self.llama_model)
        self.train(self.training)

    # ------------------------------------------------------------------ checkpoints of the trainable part
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    def checkpoint_meta(self) -> dict:
        return {"llm_hidden_size": self.llama_proj.out_features, "feature_dim": self.llama_proj.in_features,
                "has_qformer": self.vision.has_qformer, "num_image_tokens": self.vision.num_tokens,
                "llm": getattr(self.llama_model.config, "_name_or_path", ""),
                "keys": sorted(self.trainable_state_dict()),
                **({"lora": self.lora.to_meta()} if self.lora is not None else {})}

    def load_projection(self, path) -> None:
        """Load trainable weights from our safetensors or an original ``pretrained_minigpt4*.pth``:
        every trainable key must be present with the right shape; buffers of the original are ignored."""
        state, meta = ckpt_io.read_trainable(path, "model.ckpt")
        wanted = self.trainable_state_dict()
        required = lora_io.check_checkpoint(self.lora, state, meta, wanted, f"model.ckpt {path}")
        present = {k: v for k, v in state.items() if k in wanted}
        if not present:
            raise ckpt_io.CheckpointError(f"model.ckpt {path}: none of the keys {sorted(wanted)} is in the file "
                                          f"(it has {sorted(state)[:5]}...)")
        w = state.get("llama_proj.weight")
        if w is not None and tuple(w.shape) != tuple(self.llama_proj.weight.shape):
            raise ckpt_io.CheckpointError(
                f"model.ckpt {path}: llama_proj.weight is {list(w.shape)} but this model needs "
                f"{list(self.llama_proj.weight.shape)} (LLM hidden {self.llama_proj.out_features}, image feature "
                f"{self.llama_proj.in_features}); the checkpoint was trained for another LLM size or variant")
        if meta.get("has_qformer", self.vision.has_qformer) != self.vision.has_qformer:
            raise ckpt_io.CheckpointError(f"model.ckpt {path}: trained with has_qformer={meta['has_qformer']}, "
                                          f"this model has has_qformer={self.vision.has_qformer}")
        ckpt_io.load_into(self, present, required, f"model.ckpt {path}")
        skipped = sorted(set(state) - set(present))
        if skipped:
            log.info("model.ckpt: ignored %d non-trainable entries (%s)", len(skipped), ", ".join(skipped[:4]))

    # ------------------------------------------------------------------ modes and devices
    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.frozen:
            module.eval()  # frozen parts never switch on dropout
        for module in self.adapters:
            module.train(mode)  # LoRA dropout follows the model's mode
        return self

    @property
    def device(self) -> torch.device:
        return self.llama_proj.weight.device

    def maybe_autocast(self):
        """Half-precision autocast on accelerators (the LLM's own half dtype, else fp16); none on CPU."""
        if self.device.type == "cpu":
            return contextlib.nullcontext()
        dtype = self.llama_model.dtype if self.llama_model.dtype in (torch.float16, torch.bfloat16) else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    # ------------------------------------------------------------------ image -> LLM embeddings
    @property
    def vision_frozen(self) -> bool:
        return self.vision.vision_model in self.frozen and (
            not self.vision.has_qformer or self.vision.qformer in self.frozen)

    def encode_features(self, image: torch.Tensor) -> torch.Tensor:
        """Vision-tower output before ``llama_proj`` (no autograd through frozen parts; served from the
        feature cache when one is configured)."""
        def run(pixels):
            return self.vision(pixels.to(self.device))

        if not self.vision_frozen:
            return run(image)
        with torch.no_grad():
            return self.feature_cache.features(image, run) if self.feature_cache is not None else run(image)

    def project(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embeds = self.llama_proj(features.to(self.device, self.llama_proj.weight.dtype))
        return embeds, torch.ones(embeds.shape[:-1], dtype=torch.long, device=embeds.device)

    def encode_img(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixels [B,3,S,S] -> (LLM input embeddings [B, n_img, H], attention ones [B, n_img])."""
        return self.project(self.encode_features(image))

    # ------------------------------------------------------------------ tokens
    def token_ids(self, text: str) -> list[int]:
        ids = self._token_cache.get(text)
        if ids is None:
            ids = self.llama_tokenizer(text, add_special_tokens=False).input_ids
            if len(self._token_cache) < 4096:
                self._token_cache[text] = ids
        return ids

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llama_model.get_input_embeddings()(ids)

    def _bos_id(self):
        return None if self.chat_template is not None else self.llama_tokenizer.bos_token_id  # a template writes its own

    def _wrapped(self, prompts, num_tokens: int, batch: int) -> list[list[int]]:
        prompts = prompts if prompts is not None else [None] * batch
        return [P.wrap_ids([self.token_ids(s) for s in P.split_prompt(p)], num_tokens) for p in prompts]

    # ------------------------------------------------------------------ training
    def training_inputs(self, samples: dict) -> dict:
        """The LLM inputs of a training batch: layout ids (image marker -1), attention, labels, embeddings."""
        if "image_features" in samples:
            img_embeds, _ = self.project(samples["image_features"])
        else:
            img_embeds, _ = self.encode_img(samples["image"])
        batch, n_img = img_embeds.shape[:2]
        if self.prompt_list:
            prompts = [random.choice(self.prompt_list)] * batch  # one instruction per batch, as the original
        else:
            prompts = samples.get("instruction_input")
            if self.chat_template is not None and prompts is not None:
                prompts = [self.chat_template.user_prompt(p) for p in prompts]
        texts = [t + self.end_sym for t in samples["answer"]]
        answers = [ids[: self.max_txt_len]
                   for ids in self.llama_tokenizer(texts, add_special_tokens=False).input_ids]
        layout, attention, labels = P.training_layout(self._wrapped(prompts, n_img, batch), answers,
                                                      self._bos_id(), self.llama_tokenizer.pad_token_id)
        layout, attention, labels = layout.to(self.device), attention.to(self.device), labels.to(self.device)
        return {"layout": layout, "attention_mask": attention, "labels": labels,
                "inputs_embeds": P.embed_layout(layout, img_embeds, self.embed_tokens)}

    def forward(self, samples: dict, reduction: str = "mean") -> dict:
        batch = self.training_inputs(samples)
        labels = batch["labels"]
        if reduction == "mean" and (self.sequence_packing or self.label_logits_only):
            with self.maybe_autocast():
                loss = lm_loss.causal_lm_loss(self.llama_model, batch["inputs_embeds"], batch["attention_mask"],
                                              labels, packing=self.sequence_packing,
                                              label_logits_only=self.label_logits_only,
                                              row_tokens=self.packing_row_tokens)
            return {"loss": loss, "num_tokens": (labels[:, 1:] != P.IGNORE_INDEX).sum()}
        with self.maybe_autocast():
            out = self.llama_model(inputs_embeds=batch["inputs_embeds"], attention_mask=batch["attention_mask"],
                                   labels=labels if reduction == "mean" else None, return_dict=True)
        if reduction == "mean":  # token-weighted mean over the batch; num_tokens lets callers re-weight
            return {"loss": out.loss, "num_tokens": (labels[:, 1:] != P.IGNORE_INDEX).sum()}
        if reduction != "none":
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        logits, targets = out.logits[:, :-1].float(), labels[:, 1:]
        token_loss = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=P.IGNORE_INDEX, reduction="none")
        return {"loss": token_loss.sum(1) / targets.shape[1]}  # the original divides by L-1, pads included

    # ------------------------------------------------------------------ generation
    # The one input path (embed_prompts), stop policy (stop_strings, eos_token_ids) and decode (decode_answer)
    # that generate, Chat, the engine, captioning, curation and the tiny-world evaluation all go through.
    def stop_strings(self, end_sym: str | None = None) -> list[str]:
        """Text that ends an answer written with ``end_sym`` (default: the model's): its stripped text; none
        when that is EOS or blank (EOS always stops)."""
        end = (self.end_sym if end_sym is None else end_sym).strip()
        return [end] if end and end != self.llama_tokenizer.eos_token else []

    @property
    def eos_text(self) -> str:
        return self.llama_tokenizer.eos_token or ""

    def eos_token_ids(self, stop_token_ids=()) -> set[int]:
        """Token ids that end a row: the LLM's generation-config EOS, the tokenizer's, and ``stop_token_ids``."""
        cfg = self.llama_model.generation_config
        eos = getattr(cfg, "eos_token_id", None)
        eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        tok_eos = self.llama_tokenizer.eos_token_id
        return set(eos) | ({tok_eos} if tok_eos is not None else set()) | {int(t) for t in stop_token_ids}

    def count_tokens(self, text: str) -> int:
        return len(self.llama_tokenizer(text, add_special_tokens=False).input_ids)

    def text_streamer(self, streamer_cls, **kwargs):
        """A transformers streamer (``streamer_cls(tokenizer, **kwargs)``) decoding with this model's tokenizer."""
        return streamer_cls(self.llama_tokenizer, **kwargs)

    def context_layout(self, prompts: list[str], images_per_row: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded layout for generation: bos + segments with image markers, per row."""
        n = self.vision.num_tokens
        bos = [] if self._bos_id() is None else [self._bos_id()]
        contexts = [bos + P.wrap_ids([self.token_ids(s) for s in P.split_prompt(p, k)], n)
                    for p, k in zip(prompts, images_per_row)]
        return P.generation_layout(contexts, self.llama_tokenizer.pad_token_id)

    def embed_prompts(self, prompts: list[str | None], image_embeds: torch.Tensor | None,
                      images_per_row: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ``(inputs_embeds [B, L, H], attention_mask [B, L])`` on the model's device. Row i's
        prompt has ``images_per_row[i]`` ``<ImageHere>`` (None = the images alone); ``image_embeds`` holds
        every image's LLM embeddings in row order ([N, n, H], or any shape with N * n rows of H)."""
        prompts = [P.IMAGE_PLACEHOLDER * k if p is None else p for p, k in zip(prompts, images_per_row)]
        layout, attention = self.context_layout(prompts, images_per_row)
        if image_embeds is None:
            image_embeds = torch.zeros(0, 0, device=self.device)
        embeds = P.embed_layout(layout.to(self.device), image_embeds, self.embed_tokens)
        return embeds, attention.to(self.device)

    @torch.no_grad()
    def generate_ids(self, inputs_embeds, attention_mask, *, max_new_tokens=300, num_beams=1, do_sample=False,
                     temperature=1.0, top_p=0.9, repetition_penalty=1.0, length_penalty=1.0, min_length=1,
                     stop_strings=None, stop_token_ids=(), streamer=None, seed=None) -> torch.Tensor:
        """Generated token ids [B, T] (new tokens only). Each row stops at its own stop string, stop token or EOS."""
        kwargs = dict(max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=do_sample,
                      repetition_penalty=repetition_penalty, length_penalty=length_penalty,
                      min_new_tokens=max(0, min_length - 1) or None,
                      pad_token_id=self.llama_tokenizer.pad_token_id, streamer=streamer)
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p)
            if seed is not None:
                torch.manual_seed(seed)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        stops = self.stop_strings() if stop_strings is None else list(stop_strings)
        if stops:
            kwargs.update(stop_strings=stops, tokenizer=self.llama_tokenizer)
        if stop_token_ids:
            kwargs.update(eos_token_id=sorted(self.eos_token_ids(stop_token_ids)))
        with self.maybe_autocast():
            return self.llama_model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)

    def decode_answer(self, ids, stop_strings=None, stop_token_ids=()) -> tuple[str, bool]:
        """``(text, stopped_by_end_sym)`` of generated ids: the text up to EOS, a stop token or the first stop
        string (special tokens never leak, stripped); the flag says a stop string or stop token ended it."""
        ids = [int(i) for i in ids]
        ends = self.eos_token_ids(stop_token_ids)
        cut = next((k for k, i in enumerate(ids) if i in ends), len(ids))
        by_token = cut < len(ids) and ids[cut] in set(int(t) for t in stop_token_ids)
        text = self.llama_tokenizer.decode(ids[:cut], skip_special_tokens=False)
        stops = self.stop_strings() if stop_strings is None else list(stop_strings)
        cut_text = P.cut_at_stop(text, stops)
        by_string = len(cut_text) < len(text)
        return P.cut_at_stop(cut_text, [self.eos_text]).strip(), by_string or by_token

    def decode(self, ids, stop_strings=None, stop_token_ids=()) -> str:
        """Text of generated ids up to EOS and the first stop string (special tokens never leak)."""
        return self.decode_answer(ids, stop_strings, stop_token_ids)[0]

    def decode_text(self, ids) -> str:
        """Raw text of ids (nothing cut, special tokens kept): what streaming compares against."""
        return self.llama_tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    @torch.no_grad()
    def generate_answers(self, images, prompts: list[str | None] | None = None, **gen_kwargs) -> list[tuple[str, bool]]:
        """Batched generation -> ``(text, stopped_by_end_sym)`` per row. ``images``: [B,3,S,S] (one image per
        row) or a list of per-row tensors [k_i,3,S,S]; ``prompts``: one string per row with k_i ``<ImageHere>``
        (None = image only)."""
        per_row = [images[i : i + 1] for i in range(len(images))] if torch.is_tensor(images) else list(images)
        counts = [len(x) for x in per_row]
        prompts = list(prompts) if prompts is not None else [None] * len(per_row)
        img_embeds, _ = self.encode_img(torch.cat(per_row))
        embeds, attention = self.embed_prompts(prompts, img_embeds, counts)
        stops, stop_ids = gen_kwargs.pop("stop_strings", None), tuple(gen_kwargs.pop("stop_token_ids", ()))
        out = self.generate_ids(embeds, attention, stop_strings=stops, stop_token_ids=stop_ids, **gen_kwargs)
        return [self.decode_answer(row, stops, stop_ids) for row in out]

    @torch.no_grad()
    def generate(self, images, prompts: list[str | None] | None = None, **gen_kwargs) -> list[str]:
        """Batched generation (see :meth:`generate_answers`): the text per row."""
        return [text for text, _ in self.generate_answers(images, prompts, **gen_kwargs)]

def place_vision_tower(tower: VisionTower, cfg, device: torch.device) -> VisionTower:
    """Move the tower to ``device``; a frozen ViT runs in fp16 on CUDA unless ``vit_precision`` says fp32."""
    cfg = typed(ModelConfig, cfg, "model")
    tower.to(device)
    if cfg.vit_precision == "fp16" and cfg.freeze_vit and device.type == "cuda":
        tower.vision_model.half()
    return tower
