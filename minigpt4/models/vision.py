"""The frozen vision side: EVA-ViT-g (transformers' Blip2VisionModel) + Q-Former + query tokens.

Module names follow transformers' ``Blip2ForConditionalGeneration`` (``vision_model``, ``qformer``,
``query_tokens``), so a Hugging Face BLIP-2 folder loads without renaming. The original's ``ln_vision``
is ``vision_model.post_layernorm`` (eps 1e-5 while the blocks use 1e-6).

Without a Q-Former (the Llama-2 variant) the CLS token is dropped and every 4 consecutive patch tokens
(raster order) are concatenated: [B, 256, W] -> [B, 64, 4W].
"""
from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel, Blip2VisionConfig, Blip2VisionModel

from minigpt4.common.fields import typed
from minigpt4.common.sections import ModelConfig
from minigpt4.models import convert
from minigpt4.models import weight_files as files

log = logging.getLogger(__name__)

# EVA-ViT-g as BLIP-2 uses it: EVA-CLIP-g with its 40th block dropped, no final norm.
EVA_VIT_G = dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
                 image_size=224, patch_size=14, layer_norm_eps=1e-6, qkv_bias=True, hidden_act="gelu")
# BLIP-2's Q-Former: BERT-base with cross-attention every second layer.
BERT_BASE_QFORMER = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                         cross_attention_frequency=2, layer_norm_eps=1e-12, hidden_act="gelu")
LN_VISION_EPS = 1e-5
PATCH_GROUP = 4  # consecutive patches concatenated per image token without a Q-Former


def _plain(mapping) -> dict:
    if mapping is None:
        return {}
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(mapping):
            return OmegaConf.to_container(mapping, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return dict(mapping)


def vision_config(overrides: Mapping | None = None, image_size: int | None = None) -> Blip2VisionConfig:
    values = dict(EVA_VIT_G)
    if image_size is not None:
        values["image_size"] = image_size
    values.update(_plain(overrides))
    return Blip2VisionConfig(**values)


def qformer_config(overrides: Mapping | None, encoder_hidden_size: int) -> Blip2QFormerConfig:
    values = dict(BERT_BASE_QFORMER, encoder_hidden_size=encoder_hidden_size)
    values.update(_plain(overrides))
    return Blip2QFormerConfig(**values)


class VisionTower(nn.Module):
    """pixel_values [B,3,S,S] -> image features [B, n_tokens, feature_dim] (before ``llama_proj``)."""

    def __init__(self, vit_cfg: Blip2VisionConfig, qformer_cfg: Blip2QFormerConfig | None = None,
                 num_query_token: int = 32):
        super().__init__()
        self.vision_model = Blip2VisionModel(vit_cfg)
        self.vision_model.post_layernorm.eps = LN_VISION_EPS
        self.has_qformer = qformer_cfg is not None
        if self.has_qformer:
            self.query_tokens = nn.Parameter(torch.zeros(1, num_query_token, qformer_cfg.hidden_size))
            nn.init.normal_(self.query_tokens, std=qformer_cfg.initializer_range)
            self.qformer = Blip2QFormerModel(qformer_cfg)
        else:
            grid = vit_cfg.image_size // vit_cfg.patch_size
            if (grid * grid) % PATCH_GROUP:
                raise ValueError(f"{grid * grid} patches cannot be grouped by {PATCH_GROUP}")
            self.query_tokens = None
            self.qformer = None

    @property
    def num_tokens(self) -> int:
        if self.has_qformer:
            return self.query_tokens.shape[1]
        cfg = self.vision_model.config
        return (cfg.image_size // cfg.patch_size) ** 2 // PATCH_GROUP

    @property
    def feature_dim(self) -> int:
        if self.has_qformer:
            return self.qformer.config.hidden_size
        return self.vision_model.config.hidden_size * PATCH_GROUP

    def image_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """ln_vision(ViT(pixels)): [B, 1 + patches, W]."""
        dtype = self.vision_model.embeddings.patch_embedding.weight.dtype
        return self.vision_model(pixel_values=pixel_values.to(dtype)).last_hidden_state

    def features_from_embeds(self, image_embeds: torch.Tensor) -> torch.Tensor:
        if not self.has_qformer:
            patches = image_embeds[:, 1:, :]
            b, n, w = patches.shape
            return patches.reshape(b, n // PATCH_GROUP, w * PATCH_GROUP)
        queries = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        out = self.qformer(query_embeds=queries, encoder_hidden_states=image_embeds, encoder_attention_mask=mask)
        return out.last_hidden_state

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.features_from_embeds(self.image_embeds(pixel_values))


def build_vision_tower(cfg) -> VisionTower:
    """Vision tower sized by ``vit_config``/``qformer_config`` (or a HF BLIP-2 folder's config) and loaded
    from ``vit_ckpt`` / ``q_former_model``."""
    cfg = typed(ModelConfig, cfg, "model")
    has_qformer = cfg.has_qformer
    qsrc = cfg.q_former_model if has_qformer else None
    hf_folder = files.is_hf_folder(qsrc)
    vit_over, q_over, n_query = dict(cfg.vit_config or {}), dict(cfg.qformer_config or {}), None
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
    vcfg = vision_config(vit_over, image_size=cfg.image_size)
    qcfg = qformer_config(q_over, vcfg.hidden_size) if has_qformer else None
    num_query = cfg.num_query_token or n_query or 32
    tower = VisionTower(vcfg, qcfg, num_query)
    if cfg.drop_path_rate:
        log.warning("model.drop_path_rate=%s is ignored: the frozen tower runs without drop path",
                    cfg.drop_path_rate)
    if cfg.use_grad_checkpoint and not cfg.freeze_vit:
        tower.vision_model.gradient_checkpointing_enable()

    layers = vcfg.num_hidden_layers
    if cfg.vit_ckpt:
        path = files.require_file(cfg.vit_ckpt, "vit_ckpt")
        raw = files.tensor_dict(files.load_torch(path, "model.vit_ckpt"), f"model.vit_ckpt {path}", ())
        state, ignored = convert.eva_vit_to_hf(raw, layers)
        num_pos = tower.vision_model.embeddings.position_embedding.shape[1]
        if "embeddings.position_embedding" in state:
            state["embeddings.position_embedding"] = convert.resize_pos_embed(
                state["embeddings.position_embedding"], num_pos)
        files.load_into(tower.vision_model, state, ("embeddings.", "encoder."), f"model.vit_ckpt {path}", ignored)
    elif not hf_folder:
        files.require_file(None, "vit_ckpt")
    if has_qformer:
        path = files.require_file(qsrc, "q_former_model")
        if hf_folder:
            state, ignored = convert.read_hf_blip2_folder(path, "model.q_former_model"), None
        else:
            check_blip2_source(path)
            raw = files.tensor_dict(files.load_torch(path, "model.q_former_model"), f"model.q_former_model {path}")
            state, ignored = convert.blip2_to_hf(raw, layers)
        required = ("qformer.", "query_tokens", "vision_model.post_layernorm.")
        if hf_folder or not cfg.vit_ckpt:
            required += ("vision_model.",)
        files.load_into(tower, state, required, f"model.q_former_model {path}", ignored)
    return tower.eval()


def check_blip2_source(path) -> None:
    """``model.q_former_model`` is a BLIP-2 ``.pth`` file or a Hugging Face BLIP-2 folder (with config.json)."""
    if path.is_dir() and not (path / "config.json").exists():
        raise files.CheckpointError(f"model.q_former_model {path} is a folder without config.json; it must be "
                                    f"{files.WHERE_TO_GET['q_former_model']}")
