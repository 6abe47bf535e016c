"""A corpus of bad weight files and model folders, written on demand into a folder.

Each :class:`Case` names the config key it is given as (``model.<key>``), how to write it next to the golden
fixture's good files, and a phrase the one-line error must contain besides the key and the file's path.
``write(case, root)`` returns the path to put in the config.
"""
from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

FX = Path(__file__).resolve().parents[1] / "fixtures" / "minigpt4_tiny"
GOOD = {"vit_ckpt": FX / "eva_vit.pth", "q_former_model": FX / "blip2_qformer.pth", "llama_model": FX / "llm",
        "ckpt": FX / "minigpt4_proj.pth"}


@dataclass(frozen=True)
class Case:
    name: str
    key: str                             # model.<key>
    make: Callable[[Path], Path]         # writes the bad input under a fresh folder, returns its path
    expect: str                          # a phrase the error must contain (what is wrong)


class RunsCode:
    """Pickles as a call to os.system: what weights_only loading must refuse."""

    def __reduce__(self):
        return (os.system, ("echo this should never run",))


# ----------------------------------------------------------------------------- single-file corruptions
def _bytes(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        (root / name).write_bytes(data)
        return root / name
    return make


def _cut(name: str, source: Path, keep: float | int) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        data = source.read_bytes()
        n = keep if isinstance(keep, int) else int(len(data) * keep)
        (root / name).write_bytes(data[:n])
        return root / name
    return make


def _torch_save(name: str, obj, legacy: bool = False) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        torch.save(obj, root / name, _use_new_zipfile_serialization=not legacy)
        return root / name
    return make


def _pickle(name: str, obj) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        with open(root / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)
        return root / name
    return make


def _folder(name: str, *files: str) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        (root / name).mkdir()
        for f in files:
            (root / name / f).write_bytes(b"x")
        return root / name
    return make


def _foreign_zip(name: str) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        with zipfile.ZipFile(root / name, "w") as z:
            z.writestr("notes.txt", "a zip archive, not a checkpoint")
        return root / name
    return make


def _safetensors(name: str, tensors: dict, sidecar: str | None = None) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        save_file(tensors, str(root / name))
        if sidecar is not None:
            (root / name).with_suffix(".json").write_text(sidecar)
        return root / name
    return make


def _huge_header(name: str, claimed: int) -> Callable[[Path], Path]:
    return _bytes(name, struct.pack("<Q", claimed) + b'{"a": {"dtype": "F32"')


def _good_safetensors_bytes() -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        save_file({"llama_proj.weight": torch.ones(64, 48), "llama_proj.bias": torch.ones(64)}, f"{d}/p.safetensors")
        return Path(f"{d}/p.safetensors").read_bytes()


RANDOM = bytes((i * 7919 + 13) % 251 for i in range(4096))  # deterministic noise (starts with neither PK nor 0x80)
PROJ = {"llama_proj.weight": torch.zeros(64, 48), "llama_proj.bias": torch.zeros(64)}


def file_cases(key: str, ext: str) -> list[Case]:
    """The corruptions every single-file key is checked against."""
    good = GOOD.get(key) if ext == ".pth" else None
    cases = [
        Case(f"{key}-folder", key, _folder(f"weights{ext}", "a.bin"), "folder"),
        Case(f"{key}-empty{ext}", key, _bytes(f"empty{ext}", b""), "empty"),
        Case(f"{key}-random{ext}", key, _bytes(f"random{ext}", RANDOM), "not a"),
        Case(f"{key}-text{ext}", key, _bytes(f"notes{ext}", b"this is a text file, not weights\n" * 4), "not a"),
    ]
    if ext == ".pth":
        cases += [
            Case(f"{key}-truncated-half", key, _cut("half.pth", good, 0.5), "truncated"),
            Case(f"{key}-truncated-head", key, _cut("head.pth", good, 64), "truncated"),
            Case(f"{key}-code-pickle", key, _pickle("code.pth", {"model": RunsCode()}), "not a plain tensor"),
            Case(f"{key}-code-in-zip", key, _torch_save("code_zip.pth", {"w": torch.ones(1), "x": RunsCode()}),
                 "not a plain tensor"),
            Case(f"{key}-plain-pickle", key, _pickle("plain.pth", {"w": [1, 2]}), "not a plain tensor"),
            Case(f"{key}-foreign-zip", key, _foreign_zip("archive.pth"), "not a PyTorch checkpoint"),
            Case(f"{key}-list", key, _torch_save("list.pth", [torch.ones(2)]), "expected a state dict"),
            Case(f"{key}-no-tensors", key, _torch_save("numbers.pth", {"epoch": 3, "lr": 0.1}), "no tensors"),
            Case(f"{key}-legacy-truncated", key, _cut_legacy("legacy.pth"), "truncated"),
        ]
    return cases


def _cut_legacy(name: str) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        torch.save({"w": torch.ones(256)}, root / "full.pth", _use_new_zipfile_serialization=False)
        data = (root / "full.pth").read_bytes()
        (root / name).write_bytes(data[: len(data) - 200])
        return root / name
    return make


def safetensors_cases(key: str) -> list[Case]:
    good = _good_safetensors_bytes()
    return [
        Case(f"{key}-st-empty", key, _bytes("empty.safetensors", b""), "empty"),
        Case(f"{key}-st-tiny", key, _bytes("tiny.safetensors", b"abc"), "too short"),
        Case(f"{key}-st-truncated", key, _bytes("cut.safetensors", good[: len(good) // 2]), "truncated"),
        Case(f"{key}-st-header-cut", key, _bytes("hdr.safetensors", good[:40]), "truncated"),
        Case(f"{key}-st-random", key, _bytes("random.safetensors", RANDOM), "not a safetensors file"),
        Case(f"{key}-st-header-gigabytes", key, _huge_header("huge.safetensors", 50 << 30), "50.0 GB"),
        Case(f"{key}-st-header-bad-json", key, _bytes("json.safetensors", struct.pack("<Q", 10) + b"{not json}"),
             "not a valid safetensors file"),
        Case(f"{key}-st-folder", key, _folder("dir.safetensors"), "folder"),
    ]


def trainable_cases() -> list[Case]:
    nan, inf = dict(PROJ), dict(PROJ)
    nan["llama_proj.weight"] = torch.full((64, 48), float("nan"))
    inf["llama_proj.bias"] = torch.tensor([float("inf")] * 64)
    return [
        Case("ckpt-nan-safetensors", "ckpt", _safetensors("nan.safetensors", nan), "NaN/inf"),
        Case("ckpt-inf-safetensors", "ckpt", _safetensors("inf.safetensors", inf), "NaN/inf"),
        Case("ckpt-nan-pth", "ckpt", _torch_save("nan.pth", {"model": nan}), "NaN/inf"),
        Case("ckpt-sidecar-broken", "ckpt", _safetensors("proj.safetensors", PROJ, "{broken"), "not valid JSON"),
        Case("ckpt-sidecar-list", "ckpt", _safetensors("proj2.safetensors", PROJ, "[1, 2]"), "JSON object"),
        Case("ckpt-no-projection", "ckpt", _safetensors("other.safetensors", {"w": torch.ones(2)}),
             "no llama_proj.weight"),
        Case("ckpt-other-llm-size", "ckpt", _safetensors("big.safetensors", {"llama_proj.weight": torch.zeros(32, 48)}),
             "hidden size 32"),
    ]


# ----------------------------------------------------------------------------- Hugging Face folders
def _hf_folder(name: str, source: Path, edit: Callable[[Path], None]) -> Callable[[Path], Path]:
    """A copy of ``source`` (files linked, not copied) changed by ``edit``."""
    def make(root: Path) -> Path:
        folder = root / name
        folder.mkdir()
        for f in source.iterdir():
            os.symlink(f, folder / f.name)
        edit(folder)
        return folder
    return make


def _replace(file: str, data: bytes | None) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        (folder / file).unlink(missing_ok=True)
        if data is not None:
            (folder / file).write_bytes(data)
    return edit


def _edit_json(file: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        data = json.loads((folder / file).read_text())
        change(data)
        _replace(file, json.dumps(data).encode())(folder)
    return edit


def _then(*edits: Callable[[Path], None]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        for e in edits:
            e(folder)
    return edit


def _blip2_source(root: Path) -> Path:
    """A minimal Hugging Face BLIP-2 folder: config.json + one qformer tensor (enough for the checks)."""
    folder = root / "_blip2_source"
    if not folder.exists():
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "blip-2", "num_query_tokens": 4}))
        save_file({"qformer.layernorm.weight": torch.ones(4), "query_tokens": torch.zeros(1, 4, 4)},
                  str(folder / "model.safetensors"))
    return folder


def _blip2_folder(name: str, edit: Callable[[Path], None]) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        return _hf_folder(name, _blip2_source(root), edit)(root)
    return make


def llm_cases() -> list[Case]:
    llm, weights = GOOD["llama_model"], (GOOD["llama_model"] / "model.safetensors").read_bytes()
    config = lambda change: _edit_json("config.json", change)  # noqa: E731

    def case(name, edit, expect):
        return Case(f"llama_model-{name}", "llama_model", _hf_folder(name, llm, edit), expect)

    return [
        Case("llama_model-a-file", "llama_model", lambda root: GOOD["llama_model"] / "model.safetensors", "is a file"),
        case("no-config", _replace("config.json", None), "no config.json"),
        case("config-not-json", _replace("config.json", b'{"model_type": "llama",'), "config.json is not valid JSON"),
        case("config-binary", _replace("config.json", RANDOM), "config.json is not"),
        case("config-a-list", _replace("config.json", b"[1, 2, 3]"), "JSON object"),
        case("no-model-type", config(lambda c: c.pop("model_type")), "no model_type"),
        case("unknown-model-type", config(lambda c: c.update(model_type="lama")), "model_type 'lama'"),
        case("not-causal", config(lambda c: c.update(model_type="vit")), "not a causal language model"),
        case("no-weights", _replace("model.safetensors", None), "no weights"),
        case("weights-truncated", _replace("model.safetensors", weights[: len(weights) // 3]), "truncated"),
        case("weights-random", _replace("model.safetensors", RANDOM), "model.safetensors: not a safetensors"),
        case("weights-empty", _replace("model.safetensors", b""), "model.safetensors is empty"),
        case("weights-header-gigabytes", _replace("model.safetensors", struct.pack("<Q", 3 << 30) + b"{}"), "3.0 GB"),
        case("shard-missing", _then(_replace("model.safetensors", None), _replace(
            "model.safetensors.index.json", json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}})
            .encode())), "shard(s) that are missing"),
        case("index-broken", _then(_replace("model.safetensors", None),
                                   _replace("model.safetensors.index.json", b"{")), "index.json is not valid JSON"),
        case("bin-code-pickle", _then(_replace("model.safetensors", None),
                                      lambda f: _pickle("pytorch_model.bin", {"w": RunsCode()})(f)),
             "not a plain tensor"),
        case("bin-code-in-zip", _then(_replace("model.safetensors", None), lambda f: _torch_save(
            "pytorch_model.bin", {"w": torch.ones(1), "x": RunsCode()})(f)), "not a plain tensor"),
        case("bin-truncated", _then(_replace("model.safetensors", None),
                                    lambda f: _cut("pytorch_model.bin", GOOD["ckpt"], 0.5)(f)), "truncated"),
        case("no-tokenizer", _replace("tokenizer.model", None), "no tokenizer files"),
        case("tokenizer-model-garbage", _replace("tokenizer.model", RANDOM), "not a SentencePiece model"),
        case("tokenizer-config-broken", _replace("tokenizer_config.json", b"{'single': quotes}"),
             "tokenizer_config.json is not valid JSON"),
        case("special-tokens-broken", _replace("special_tokens_map.json", b"<html>"),
             "special_tokens_map.json is not valid JSON"),
        case("tokenizer-json-broken", _replace("tokenizer.json", b'{"version": "1.0", '),
             "tokenizer.json is not valid JSON"),
        case("unknown-tokenizer-class", _edit_json("tokenizer_config.json",
                                                   lambda c: c.update(tokenizer_class="LlamaTokeniser")),
             "tokenizer_class 'LlamaTokeniser'"),
    ]


def blip2_folder_cases() -> list[Case]:
    def case(name, edit, expect):
        return Case(f"q_former_model-{name}", "q_former_model", _blip2_folder(name, edit), expect)

    return [
        Case("q_former_model-folder-without-config", "q_former_model", _folder("blip2_pth_folder", "weights.pth"),
             "folder without config.json"),
        case("hf-config-broken", _replace("config.json", b"model_type: blip-2"), "config.json is not valid JSON"),
        case("hf-not-blip2", _replace("config.json", b'{"model_type": "llama"}'), "a BLIP-2 folder has 'blip-2'"),
        case("hf-no-weights", _replace("model.safetensors", None), "no weights"),
        case("hf-weights-truncated", _replace("model.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{}"),
             "truncated"),
        case("hf-no-qformer", lambda f: _replace("model.safetensors", None)(f) or save_file(
            {"language_model.w": torch.ones(2)}, str(f / "model.safetensors")), "no qformer.* tensors"),
        case("hf-bin-code-pickle", _then(_replace("model.safetensors", None),
                                         lambda f: _pickle("pytorch_model.bin", {"w": RunsCode()})(f)),
             "not a plain tensor"),
    ]


def content_cases() -> list[Case]:
    """Valid torch files holding the wrong thing for their key."""
    return [
        Case("vit_ckpt-blip2-file", "vit_ckpt", lambda root: GOOD["q_former_model"], "no tensors at its top level"),
        Case("vit_ckpt-other-tensors", "vit_ckpt", _torch_save("other.pth", {"fc.weight": torch.ones(2)}),
             "not an EVA-ViT checkpoint"),
        Case("q_former_model-vit-file", "q_former_model", lambda root: GOOD["vit_ckpt"], "not a BLIP-2 checkpoint"),
        Case("vit_ckpt-safetensors", "vit_ckpt", _safetensors("eva.safetensors", {"w": torch.ones(2)}),
             "not a plain tensor"),
    ]


def all_cases() -> list[Case]:
    cases = []
    for key in ("vit_ckpt", "q_former_model", "ckpt"):
        cases += file_cases(key, ".pth")
    cases += safetensors_cases("ckpt") + trainable_cases() + llm_cases() + blip2_folder_cases() + content_cases()
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases
