"""The frozen vision side: EVA-ViT-g (transformers' Blip2VisionModel) + Q-Former + query tokens.

Module names follow transformers' ``Blip2ForConditionalGeneration`` (``vision_model``, ``qformer``,
``query_tokens``), so a Hugging Face BLIP-2 folder loads without renaming. The original's ``ln_vision``
is ``vision_model.post_layernorm`` (eps 1e-5 while the blocks use 1e-6).

Without a Q-Former (the Llama-2 variant) the CLS token is dropped and every 4 consecutive patch tokens
(raster order) are concatenated: [B, 256, W] -> [B, 64, 4W].
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel, Blip2VisionConfig, Blip2VisionModel

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
