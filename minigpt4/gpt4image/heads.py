"""Projection heads: the backbone's pooled feature -> the text embedding dimension (training only).

``bn``     Linear(d, 2D, bias=False) -> BatchNorm1d(2D) -> ReLU -> Linear(2D, D), trunc-normal std D^-0.5
           (the ResNet recipe's head).
``mlp``    Linear(d, 2D) -> ReLU -> Linear(2D, D), trunc-normal std 0.02 (the ViT/DeiT recipe's head).
``linear`` Linear(d, D).
``auto``   ``bn`` for a backbone that contains BatchNorm layers (CNNs), ``mlp`` otherwise (transformers).
"""
from __future__ import annotations

from torch import nn

from minigpt4.errors import ConfigError

HEAD_TYPES = ("auto", "bn", "mlp", "linear")


def resolve_head_type(head_type: str, backbone: nn.Module) -> str:
    if head_type not in HEAD_TYPES:
        raise ConfigError(f"model.head_type must be one of {list(HEAD_TYPES)}, got {head_type!r}")
    if head_type != "auto":
        return head_type
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in backbone.modules())
    return "bn" if has_bn else "mlp"


def _init(module: nn.Module, std: float) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def build_head(head_type: str, in_dim: int, out_dim: int) -> nn.Module:
    """A head of an already resolved type (not ``auto``)."""
    hidden = 2 * out_dim
    if head_type == "bn":
        head = nn.Sequential(nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                             nn.Linear(hidden, out_dim))
        _init(head, out_dim ** -0.5)
    elif head_type == "mlp":
        head = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))
        _init(head, 0.02)
    elif head_type == "linear":
        head = nn.Linear(in_dim, out_dim)
        _init(head, 0.02)
    else:
        raise ConfigError(f"model.head_type must be one of {list(HEAD_TYPES)}, got {head_type!r}")
    return head
