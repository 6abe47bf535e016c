"""How the model is spread over the processes of a run: ``run.parallel: ddp | fsdp``.

``ddp`` (default): every rank holds the whole model; only the trainable parameters are synchronised
(``DistributedDataParallel`` averages their gradients).

``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``). Every decoder layer of the LLM is one sharding unit
(the classes the Hugging Face model names in ``_no_split_modules``), so are the input embeddings and the LM
head (when their weights are not tied) and every encoder layer of the vision tower when it is large
(``run.fsdp_shard_vision``); the model itself is the root unit holding the rest (final norm, Q-Former,
``llama_proj``). Frozen weights are sharded like any other; the
trainable ones (``llama_proj``, LoRA adapters: whatever has ``requires_grad``) are sharded too, and FSDP
reduce-scatters their gradients as the mean over ranks, the same update DDP makes.

Whatever the mode, the runner sees one interface: :meth:`Parallel.trainable_state` returns full tensors on
every rank (gathered under FSDP), and the optimizer state is saved as full tensors too, so checkpoints and
resume files have one format (an FSDP run loads anywhere: a single-process chat, a DDP run).
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import inspect
import logging

import torch
from torch import nn

from minigpt4.common import dist as D
from minigpt4.common.config import ConfigError

log = logging.getLogger(__name__)

MODES = ("ddp", "fsdp")
VISION_AUTO_PARAMS = 100_000_000  # fsdp_shard_vision: auto shards a vision tower above this size (EVA-ViT-g: 1B)


def parallel_mode(run_cfg) -> str:
    mode = str(run_cfg.get("parallel", "ddp") or "ddp").lower()
    if mode not in MODES:
        raise ConfigError(f"run.parallel must be one of {list(MODES)}, got {mode!r}")
    return mode


class Parallel:
    """A single process or DDP: ``module`` is what the loop calls, ``model`` the plain model."""

    sharded = False

    def __init__(self, model: nn.Module, module: nn.Module | None = None):
        self.model = model
        self.module = module if module is not None else model

    def sync(self, update: bool):
        """Gradient synchronisation only on the micro-step that ends with an optimizer step."""
        if update or self.module is self.model:
            return contextlib.nullcontext()
        return self.module.no_sync()

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The trainable weights as full tensors (collective under FSDP: every rank calls)."""
        return self.model.trainable_state_dict()

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        return optimizer.state_dict()

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        optimizer.load_state_dict(state)


def ddp_module(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP over the trainable parameters only: frozen weights and buffers are the same files on every rank."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    ignore = [n for n, p in model.named_parameters() if not p.requires_grad]
    ignore += [n for n, _ in model.named_buffers()]
    DDP._set_params_and_buffers_to_ignore_for_model(model, ignore)
    ids = [device.index] if device.type == "cuda" else None
    # every buffer is ignored above; newer torch deprecates broadcast_buffers for forward_sync_buffers
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
               else {"broadcast_buffers": False})
    return DDP(model, device_ids=ids, output_device=ids[0] if ids else None, **no_sync)


# --------------------------------------------------------------------------- FSDP2
def _is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if _is_dtensor(t) else t


def decoder_layers(llm: nn.Module) -> list[nn.Module]:
    """The LLM's decoder layers: modules whose class a Hugging Face model lists in ``_no_split_modules``
    (outermost only; works through wrappers such as a peft model)."""
    names: set[str] = set()
    for m in llm.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    found, seen = [], set()
    for name, m in llm.named_modules():
        if type(m).__name__ in names and not any(name.startswith(p + ".") for p in seen):
            found.append(m)
            seen.add(name)
    return found


def embedding_units(llm: nn.Module) -> list[nn.Module]:
    """The input embeddings and the LM head as units of their own (gathered only while used), unless they
    share their weight (then they stay together in the root unit)."""
    emb, head = llm.get_input_embeddings(), llm.get_output_embeddings()
    if emb is None or head is None or head.weight is emb.weight:
        return []
    return [emb, head]


def vision_layers(vision: nn.Module) -> list[nn.Module]:
    """The vision tower's transformer blocks (ViT encoder layers, then Q-Former layers)."""
    layers = []
    encoder = getattr(getattr(vision, "vision_model", None), "encoder", None)
    layers += list(getattr(encoder, "layers", ()))
    qformer = getattr(vision, "qformer", None)
    if qformer is not None:
        layers += list(getattr(getattr(qformer, "encoder", None), "layer", ()))
    return layers


def _shard_vision(run_cfg, vision: nn.Module | None) -> bool:
    if vision is None:
        return False
    setting = run_cfg.get("fsdp_shard_vision", "auto")
    if isinstance(setting, bool):
        return setting
    if str(setting).lower() != "auto":
        raise ConfigError(f"run.fsdp_shard_vision must be true, false or auto, got {setting!r}")
    return sum(p.numel() for p in vision.parameters()) > VISION_AUTO_PARAMS


class Sharded(Parallel):
    """FSDP2: the model is sharded in place (its parameters become DTensors)."""

    sharded = True

    def sync(self, update: bool):
        @contextlib.contextmanager
        def ctx():
            self.model.set_requires_gradient_sync(update)
            try:
                yield
            finally:
                self.model.set_requires_gradient_sync(True)

        return ctx()

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: _full(v) for k, v in self.model.trainable_state_dict().items()}

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        """``optimizer.state_dict()`` with every sharded tensor gathered: the format DDP saves."""
        state = optimizer.state_dict()
        state["state"] = {i: {k: _full(v) if torch.is_tensor(v) else v for k, v in s.items()}
                          for i, s in state["state"].items()}
        return state

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """Full tensors (as saved by either mode) -> this rank's shards, then the ordinary load."""
        from torch.distributed.tensor import distribute_tensor

        params = [p for g in optimizer.param_groups for p in g["params"]]
        local = {}
        for i, s in state["state"].items():
            p = params[int(i)]
            local[i] = {k: distribute_tensor(v.to(p.device), p.device_mesh, p.placements)
                        if torch.is_tensor(v) and _is_dtensor(p) and v.shape == p.shape else v
                        for k, v in s.items()}
        optimizer.load_state_dict({**state, "state": local})


def _release_freed_memory() -> None:
    """Hand the full copies the shards replaced back to the OS (glibc keeps freed heap memory otherwise, so a
    CPU rank's resident memory would not shrink after sharding)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def check_fsdp(model_cfg) -> None:
    """What FSDP cannot shard or scale, refused before any model is loaded."""
    for key in ("low_resource", "load_in_4bit"):
        if model_cfg.get(key, False):
            raise ConfigError(f"run.parallel: fsdp cannot shard a quantized LLM (model.{key}: True); "
                              "use run.parallel: ddp")
    if model_cfg.get("device_map"):
        raise ConfigError("run.parallel: fsdp places the LLM itself; remove model.device_map")


def build(model: nn.Module, run_cfg, dist: D.DistInfo, ddp=None) -> Parallel:
    """Wrap ``model`` for ``run.parallel``; a single process runs the plain model whatever the mode.
    ``ddp(model)`` builds the DDP module (a runner may synchronise other things than the default)."""
    mode = parallel_mode(run_cfg)
    if not dist.distributed:
        return Parallel(model)
    if mode == "ddp":
        return Parallel(model, (ddp or (lambda m: ddp_module(m, dist.device)))(model))
    from torch.distributed.fsdp import fully_shard

    llm = getattr(model, "llama_model", None)
    if llm is None:
        raise ConfigError(f"run.parallel: fsdp needs a model with an LLM (llama_model); "
                          f"{type(model).__name__} has none: use run.parallel: ddp")
    units = decoder_layers(llm)
    if not units:
        raise ConfigError(f"run.parallel: fsdp found no decoder layers in {type(llm).__name__} (it names none in "
                          "_no_split_modules); use run.parallel: ddp")
    units += embedding_units(llm)
    vision = getattr(model, "vision", None)
    vision_units = vision_layers(vision) if _shard_vision(run_cfg, vision) else []
    for unit in vision_units + units:
        fully_shard(unit)
    fully_shard(model)
    _release_freed_memory()
    n_params = sum(p.numel() for p in model.parameters())
    log.info("fsdp: %d LLM units (decoder layers, embeddings) and %d vision layers sharded over %d ranks "
             "(%.1fM parameters, %.1fM per rank)", len(units), len(vision_units), dist.world_size, n_params / 1e6,
             sum(p.to_local().numel() if _is_dtensor(p) else p.numel() for p in model.parameters()) / 1e6)
    return Sharded(model)
