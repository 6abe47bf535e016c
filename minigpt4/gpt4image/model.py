"""GPT4Image classifier (``arch: gpt4image_classifier``): a timm backbone trained with cross-entropy plus
``lambda`` x an alignment loss between a projection of its pooled feature and the fixed text embedding of
each image's description.

    feature h = backbone.forward_head(backbone.forward_features(x), pre_logits=True)
    logits    = backbone classifier(h)                 (exactly what the exported timm model computes)
    z         = head(h)                                 (training only; see heads.py)
    loss      = CE(logits, y) + lambda * align(z, t)    (losses.py; lambda = 0 -> plain baseline, no head)

CE uses label smoothing, or timm's soft-target CE when mixup/cutmix is on (timm ``Mixup``). With mixup the
images are mixed but every sample keeps its own, unmixed text embedding as its alignment target, as the
method's public recipe does.
"""
from __future__ import annotations

import logging
import re

import torch
from omegaconf import OmegaConf
from torch import nn

from minigpt4.common import dist as D
from minigpt4.common.fields import check_table
from minigpt4.common.registry import registry
from minigpt4.errors import ConfigError, UserError
from minigpt4.gpt4image import losses
from minigpt4.gpt4image.heads import build_head, resolve_head_type
from minigpt4.gpt4image.weights import CONFIG_KEYS, load_backbone_weights, load_full_state

log = logging.getLogger(__name__)


class BatchTooSmall(UserError):
    """Skipped samples left a training batch that the network cannot take."""


TIMM_KEYS = ("img_size", "drop_path_rate", "drop_rate")  # model keys passed on to timm.create_model


@registry.register_model("gpt4image_classifier")
class GPT4ImageClassifier(nn.Module):
    CONFIG_KEYS = CONFIG_KEYS
    PRETRAINED_MODEL_CONFIG_DICT: dict[str, str] = {}

    def __init__(self, backbone_name: str, num_classes: int, *, text_dim: int | None = None, head_type="auto",
                 lam: float = 0.3, align_loss: str = "clip", tau: float = 0.2, label_smoothing: float = 0.0,
                 mixup=None, backbone_kwargs: dict | None = None, class_names=None):
        import timm  # imported on use: ``import minigpt4`` stays light for the MiniGPT-4 commands

        super().__init__()
        if align_loss not in losses.ALIGN_LOSSES:
            raise ConfigError(f"model.align_loss must be one of {list(losses.ALIGN_LOSSES)}, got {align_loss!r}")
        if lam < 0 or tau <= 0:
            raise ConfigError(f"model.lambda must be >= 0 and model.tau > 0, got {lam} and {tau}")
        if not isinstance(backbone_name, str) or not re.fullmatch(r"[\w.\-]+", backbone_name):
            raise ConfigError(f"model.backbone must be a timm architecture name such as resnet50 or "
                              f"vit_base_patch16_224, got {backbone_name!r}; weights come from model.backbone_ckpt "
                              "(timm's hub and folder prefixes are not taken: nothing is downloaded)")
        self.backbone_name, self.backbone_kwargs = backbone_name, dict(backbone_kwargs or {})
        if self.backbone_kwargs.get("in_chans", 3) != 3:
            raise ConfigError(f"model.backbone_kwargs.in_chans: the image processors give RGB (3 channels), got "
                              f"{self.backbone_kwargs['in_chans']!r}")
        reserved = sorted({"num_classes", "pretrained"} & set(self.backbone_kwargs))
        if reserved:
            raise ConfigError(f"model.backbone_kwargs.{reserved[0]}: set by the library (num_classes from the "
                              "data, pretrained never: weights come from model.backbone_ckpt)")
        try:
            self.backbone = timm.create_model(backbone_name, pretrained=False, num_classes=num_classes,
                                              **self.backbone_kwargs)
        except RuntimeError as e:
            if "Unknown model" in str(e):
                raise ConfigError(f"model.backbone: {e}") from None
            raise
        except TypeError as e:  # only a keyword given here that the timm class does not take is the config's
            bad = re.search(r"unexpected keyword argument '(\w+)'", str(e))
            if bad is None or bad.group(1) not in self.backbone_kwargs:
                raise
            name = bad.group(1)
            where = f"model.{name} (or model.backbone_kwargs.{name})" if name in TIMM_KEYS else \
                f"model.backbone_kwargs.{name}"
            raise ConfigError(f"{where}: timm's {backbone_name!r} takes no argument {name!r} ({e})") from None
        self.num_classes, self.class_names = int(num_classes), list(class_names or [])
        self.lam, self.align_kind, self.tau = float(lam), align_loss, float(tau)
        self.text_dim = text_dim
        self.head_type = resolve_head_type(head_type, self.backbone)
        self.head = None
        if self.lam > 0:
            if not text_dim:
                raise ConfigError("model.lambda > 0 needs text embeddings: set datasets.<name>.build_info.embeddings")
            self.head = build_head(self.head_type, self.backbone.num_features, int(text_dim))
        self.mixup = mixup
        from timm.loss import SoftTargetCrossEntropy

        self.criterion = SoftTargetCrossEntropy() if mixup is not None else \
            nn.CrossEntropyLoss(label_smoothing=float(label_smoothing))

    @classmethod
    def from_config(cls, cfg, device=None, *, num_classes: int | None = None, text_dim: int | None = None,
                    class_names=None) -> "GPT4ImageClassifier":
        """``num_classes`` / ``text_dim`` / ``class_names`` come from the data (the task passes them); a config
        value that disagrees with the data is an error naming the key."""
        if OmegaConf.is_config(cfg):
            check_table("model", cfg, CONFIG_KEYS)  # ranges too, for a section that did not come through Config
        get = cfg.get
        for key, found in (("num_classes", num_classes), ("text_dim", text_dim)):
            if get(key) is not None and found is not None and int(get(key)) != int(found):
                raise ConfigError(f"model.{key} is {get(key)} but the data gives {found}")
        num_classes = num_classes or get("num_classes")
        if not num_classes:
            raise ConfigError("model.num_classes is not set and no training data gave it")
        text_dim = text_dim or get("text_dim")
        raw = get("backbone_kwargs") or {}
        kwargs = OmegaConf.to_container(raw) if OmegaConf.is_config(raw) else dict(raw)
        for key in TIMM_KEYS:
            if get(key) is not None:
                kwargs[key] = get(key)
        model = cls(get("backbone"), int(num_classes), text_dim=text_dim, head_type=get("head_type", "auto"),
                    lam=float(get("lambda", 0.3)), align_loss=get("align_loss", "clip"), tau=float(get("tau", 0.2)),
                    label_smoothing=float(get("label_smoothing", 0.0)), mixup=build_mixup(cfg, int(num_classes)),
                    backbone_kwargs=kwargs, class_names=class_names)
        if get("backbone_ckpt"):
            load_backbone_weights(model.backbone, get("backbone_ckpt"))
        return model.to(torch.device(device or get("device") or D.default_device()))

    # ------------------------------------------------------------------ forward
    def features(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled feature h, logits)."""
        h = self.backbone.forward_head(self.backbone.forward_features(image), pre_logits=True)
        return h, self.backbone.get_classifier()(h)

    def forward(self, samples: dict) -> dict:
        image, label = samples["image"], samples["label"]
        target = label
        if self.training and self.mixup is not None and image.shape[0] % 2:
            # run.batch_size_train is even (the runner checks it): skipped unreadable images made this batch odd
            log.warning("a batch of %d images (unreadable ones were skipped): mixup/cutmix pairs images, the "
                        "last one sits this step out", image.shape[0])
            samples = {k: v[:-1] for k, v in samples.items()}
            image, label = samples["image"], samples["label"]
        if self.training and self.head_type == "bn" and self.head is not None and image.shape[0] < 2:
            raise BatchTooSmall("a training batch holds 1 image after unreadable ones were skipped (see the skip "
                                "log): the projection head's BatchNorm needs 2; repair or remove those images")
        if self.training and self.mixup is not None:
            image, target = self.mixup(image, label)
        h, logits = self.features(image)
        ce = self.criterion(logits, target)
        out = {"logits": logits, "ce": ce.detach(), "num_tokens": image.shape[0]}
        loss = ce
        if self.head is not None and self.training:
            t = samples.get("text_embedding")
            if t is None:
                raise ConfigError("model.lambda > 0 but the batch has no text embeddings "
                                  "(set datasets.<name>.build_info.embeddings)")
            align = losses.alignment_loss(self.align_kind, self.head(h), t, self.tau)
            out["align"] = align.detach()
            if losses.is_global(self.align_kind) and D.get_world_size() > 1:
                # the value is already the global batch's on every rank and DDP averages gradients over ranks:
                # scale the gradient (not the value) by the world size so the update is the global loss's
                world = D.get_world_size()
                align = align * world - align.detach() * (world - 1)
            loss = ce + self.lam * align
        out["loss"] = loss
        return out

    # ------------------------------------------------------------------ checkpoints (runner interface)
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole network trains: every parameter and buffer (BatchNorm statistics included)."""
        return {k: v.detach() for k, v in self.state_dict().items()}

    def checkpoint_meta(self) -> dict:
        return {"arch": "gpt4image_classifier", "backbone": self.backbone_name,
                "backbone_kwargs": self.backbone_kwargs, "num_classes": self.num_classes,
                "class_names": self.class_names, "text_dim": self.text_dim,
                "head_type": self.head_type if self.head is not None else None, "lambda": self.lam,
                "align_loss": self.align_kind, "tau": self.tau}

    def load_projection(self, path) -> None:
        """Resume: every weight and buffer of this model from a checkpoint written by the runner (strict)."""
        load_full_state(self, path)

    def classifier_state_dict(self) -> dict[str, torch.Tensor]:
        """The plain timm classifier (no projection head): loads strictly into
        ``timm.create_model(backbone, num_classes=K, **backbone_kwargs)``."""
        return {k: v.detach() for k, v in self.backbone.state_dict().items()}


def build_mixup(cfg, num_classes: int):
    """timm ``Mixup`` when ``model.mixup`` or ``model.cutmix`` > 0 (it applies the label smoothing itself)."""
    mixup, cutmix = float(cfg.get("mixup", 0.0) or 0.0), float(cfg.get("cutmix", 0.0) or 0.0)
    if mixup <= 0 and cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=float(cfg.get("mixup_prob", 1.0)),
                 switch_prob=float(cfg.get("mixup_switch_prob", 0.5)),
                 label_smoothing=float(cfg.get("label_smoothing", 0.0)), num_classes=num_classes)


@torch.no_grad()
def topk_correct(logits: torch.Tensor, label: torch.Tensor, ks=(1, 5)) -> list[int]:
    """Number of rows whose label is among the top-k logits, for each k (k capped at the class count)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hit = top == label[:, None]
    return [int(hit[:, :k].any(dim=1).sum()) for k in ks]


