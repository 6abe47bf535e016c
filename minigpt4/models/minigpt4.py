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

from minigpt4.common.registry import registry
from minigpt4.models import checkpoint as ckpt_io
from minigpt4.models import lm_loss
from minigpt4.models import prompting as P
from minigpt4.models.feature_cache import FeatureCache
from minigpt4.models.llm import load_llm, load_tokenizer, parse_dtype
from minigpt4.models.vision import VisionTower, qformer_config, vision_config

log = logging.getLogger(__name__)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
        self.sequence_packing = False  # see minigpt4.models.lm_loss (set by from_config)
        self.label_logits_only = False
        self.train(False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, cfg, device: str | torch.device | None = None) -> "MiniGPT4":
        get = cfg.get
        if get("lora_r", 0):
            raise ValueError("model.lora_r > 0: LoRA is not supported; MiniGPT-4 trains only llama_proj")
        device = torch.device(device or get("device") or default_device())
        llm_dtype = parse_dtype(get("torch_dtype"), device)
        tokenizer = load_tokenizer(get("llama_model"), get("pad_token", "$$"))
        llm = load_llm(get("llama_model"), device=device, dtype=llm_dtype, low_resource=get("low_resource", False),
                       device_8bit=get("device_8bit", 0), load_in_4bit=get("load_in_4bit", False),
                       device_map=get("device_map"), attn_implementation=get("attn_implementation"))
        vision = build_vision_tower(cfg)
        prompt_list = []
        if get("prompt_path"):
            from minigpt4.common.config import resolve_path

            prompt_list = P.load_prompt_list(resolve_path(get("prompt_path")), get("prompt_template", "{}"))
            log.info("loaded %d training prompts from %s", len(prompt_list), get("prompt_path"))
        model = cls(vision, llm, tokenizer, prompt_list=prompt_list, max_txt_len=get("max_txt_len", 32),
                    end_sym=get("end_sym", "\n"), freeze_vit=get("freeze_vit", True),
                    freeze_qformer=get("freeze_qformer", True))
        if get("ckpt"):
            model.load_projection(ckpt_io.require_file(get("ckpt"), "ckpt"))
        if get("feature_cache_size", 0):
            if not model.vision_frozen:
                raise ValueError("model.feature_cache_size needs a frozen vision tower (freeze_vit, freeze_qformer)")
            model.feature_cache = FeatureCache(get("feature_cache_size"))
        model.sequence_packing = bool(get("sequence_packing", False))
        model.label_logits_only = bool(get("label_logits_only", False))
        if model.label_logits_only:
            lm_loss.check_label_logits_only(llm)
        place_vision_tower(model.vision, cfg, device)
        model.llama_proj.to(device)
        return model

    # ------------------------------------------------------------------ checkpoints of the trainable part
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    def checkpoint_meta(self) -> dict:
        return {"llm_hidden_size": self.llama_proj.out_features, "feature_dim": self.llama_proj.in_features,
                "has_qformer": self.vision.has_qformer, "num_image_tokens": self.vision.num_tokens,
                "llm": getattr(self.llama_model.config, "_name_or_path", ""),
                "keys": sorted(self.trainable_state_dict())}

    def load_projection(self, path) -> None:
        """Load trainable weights from our safetensors or an original ``pretrained_minigpt4*.pth``:
        every trainable key must be present with the right shape; buffers of the original are ignored."""
        state, meta = ckpt_io.read_trainable(path)
        wanted = self.trainable_state_dict()
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
        ckpt_io.load_into(self, present, tuple(wanted), f"model.ckpt {path}")
        skipped = sorted(set(state) - set(present))
        if skipped:
            log.info("model.ckpt: ignored %d non-trainable entries (%s)", len(skipped), ", ".join(skipped[:4]))

    # ------------------------------------------------------------------ modes and devices
    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.frozen:
            module.eval()  # frozen parts never switch on dropout
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
        return self.llama_tokenizer.bos_token_id

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
                                              label_logits_only=self.label_logits_only)
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
    def stop_strings(self) -> list[str]:
        end = self.end_sym.strip()
        eos = self.llama_tokenizer.eos_token
        return [end] if end and end != eos else []

    def context_layout(self, prompts: list[str], images_per_row: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded layout for ``generate``: bos + segments with image markers, per row."""
        n = self.vision.num_tokens
        bos = [] if self._bos_id() is None else [self._bos_id()]
        contexts = [bos + P.wrap_ids([self.token_ids(s) for s in P.split_prompt(p, k)], n)
                    for p, k in zip(prompts, images_per_row)]
        return P.generation_layout(contexts, self.llama_tokenizer.pad_token_id)

    @torch.no_grad()
    def generate_ids(self, inputs_embeds, attention_mask, *, max_new_tokens=300, num_beams=1, do_sample=False,
                     temperature=1.0, top_p=0.9, repetition_penalty=1.0, length_penalty=1.0, min_length=1,
                     stop_strings=None, streamer=None, seed=None) -> torch.Tensor:
        """Generated token ids [B, T] (new tokens only). Each row stops at its own stop string or EOS."""
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
        with self.maybe_autocast():
            return self.llama_model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)

    def decode(self, ids, stop_strings=None) -> str:
        """Text of generated ids up to EOS and the first stop string (special tokens never leak)."""
        ids = [int(i) for i in ids]
        eos = self.llama_tokenizer.eos_token_id
        if eos in ids:
            ids = ids[: ids.index(eos)]
        text = self.llama_tokenizer.decode(ids, skip_special_tokens=False)
        stops = self.stop_strings() if stop_strings is None else list(stop_strings)
        return P.cut_at_stop(text, stops + [self.llama_tokenizer.eos_token or ""]).strip()

    @torch.no_grad()
    def generate(self, images, prompts: list[str | None] | None = None, **gen_kwargs) -> list[str]:
        """Batched generation. ``images``: [B,3,S,S] (one image per row) or a list of per-row tensors
        [k_i,3,S,S]; ``prompts``: one string per row with k_i ``<ImageHere>`` (None = image only)."""
        per_row = [images[i : i + 1] for i in range(len(images))] if torch.is_tensor(images) else list(images)
        counts = [len(x) for x in per_row]
        prompts = list(prompts) if prompts is not None else [None] * len(per_row)
        prompts = [P.IMAGE_PLACEHOLDER * k if p is None else p for p, k in zip(prompts, counts)]
        img_embeds, _ = self.encode_img(torch.cat(per_row))
        layout, attention = self.context_layout(prompts, counts)
        layout, attention = layout.to(self.device), attention.to(self.device)
        embeds = P.embed_layout(layout, img_embeds, self.embed_tokens)
        stops = gen_kwargs.pop("stop_strings", None)
        out = self.generate_ids(embeds, attention, stop_strings=stops, **gen_kwargs)
        return [self.decode(row, stops) for row in out]


def place_vision_tower(tower: VisionTower, cfg, device: torch.device) -> VisionTower:
    """Move the tower to ``device``; a frozen ViT runs in fp16 on CUDA unless ``vit_precision`` says fp32."""
    get = cfg.get
    tower.to(device)
    if get("vit_precision", "fp16") == "fp16" and get("freeze_vit", True) and device.type == "cuda":
        tower.vision_model.half()
    return tower


def build_vision_tower(cfg) -> VisionTower:
    """Vision tower sized by ``vit_config``/``qformer_config`` (or a HF BLIP-2 folder's config) and loaded
    from ``vit_ckpt`` / ``q_former_model``."""
    get = cfg.get
    has_qformer = get("has_qformer", True)
    qsrc = get("q_former_model") if has_qformer else None
    hf_folder = ckpt_io.is_hf_folder(qsrc)
    vit_over, q_over, n_query = dict(get("vit_config") or {}), dict(get("qformer_config") or {}), None
    if hf_folder:
        from transformers import Blip2Config

        hf_cfg = Blip2Config.from_pretrained(str(qsrc))
        vit_over = {**hf_cfg.vision_config.to_diff_dict(), **vit_over}
        q_over = {**hf_cfg.qformer_config.to_diff_dict(), **q_over}
        n_query = hf_cfg.num_query_tokens
        for d in (vit_over, q_over):
            for k in ("model_type", "transformers_version", "_name_or_path", "architectures", "dtype",
                      "torch_dtype", "encoder_hidden_size", "output_attentions"):
                d.pop(k, None)
    vcfg = vision_config(vit_over, image_size=get("image_size"))
    qcfg = qformer_config(q_over, vcfg.hidden_size) if has_qformer else None
    num_query = get("num_query_token") or n_query or 32
    tower = VisionTower(vcfg, qcfg, num_query)
    if get("drop_path_rate", 0):
        log.warning("model.drop_path_rate=%s is ignored: the frozen tower runs without drop path",
                    get("drop_path_rate"))
    if get("use_grad_checkpoint", False) and not get("freeze_vit", True):
        tower.vision_model.gradient_checkpointing_enable()

    layers = vcfg.num_hidden_layers
    if get("vit_ckpt"):
        path = ckpt_io.require_file(get("vit_ckpt"), "vit_ckpt")
        state, ignored = ckpt_io.eva_vit_to_hf(ckpt_io.load_torch(path), layers)
        num_pos = tower.vision_model.embeddings.position_embedding.shape[1]
        if "embeddings.position_embedding" in state:
            state["embeddings.position_embedding"] = ckpt_io.resize_pos_embed(
                state["embeddings.position_embedding"], num_pos)
        ckpt_io.load_into(tower.vision_model, state, ("embeddings.", "encoder."), f"model.vit_ckpt {path}", ignored)
    elif not hf_folder:
        ckpt_io.require_file(None, "vit_ckpt")
    if has_qformer:
        path = ckpt_io.require_file(qsrc, "q_former_model")
        if hf_folder:
            state, ignored = ckpt_io.read_hf_blip2_folder(path), None
        else:
            raw = ckpt_io.load_torch(path)
            raw = raw.get("model", raw) if isinstance(raw, dict) else raw
            state, ignored = ckpt_io.blip2_to_hf(raw, layers)
        required = ("qformer.", "query_tokens", "vision_model.post_layernorm.")
        if hf_folder or not get("vit_ckpt"):
            required += ("vision_model.",)
        ckpt_io.load_into(tower, state, required, f"model.q_former_model {path}", ignored)
    return tower.eval()
