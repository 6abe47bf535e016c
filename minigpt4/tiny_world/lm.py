"""The tiny world's frozen language model: a SentencePiece tokenizer and a small ``LlamaForCausalLM``
pretrained on the world's language, saved as a Hugging Face folder (loaded with ``from_pretrained``).

The pretraining text states an object list first and then talks about it (a caption, a description, a
stage-2 style conversation where the list sits where the image goes, or the same conversation under the
curation's describe prompt, so that the stage-1 model can be asked it), so the frozen model learns to copy
from its context; image tokens later only have to imitate that list. In a share of the sequences
(``soft_header``) the list is not text but *slot vectors*, laid out as the vision tower lays out its query
tokens (one group of positions per object, left to right), each the sum of its object's size, colour and
shape word embeddings plus noise: what a linear projection of the tower's per-slot features can produce.
The model thus learns to read a list given as vectors, which is what stages 1 and 2 align the projection
to. Every sequence is tokenized segment by segment exactly as :class:`~minigpt4.models.MiniGPT4` tokenizes
its inputs.
"""
from __future__ import annotations

import io
import json
import logging
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from minigpt4.curate.config import DESCRIBE_INSTRUCTION, PAPER_TEMPLATE
from minigpt4.tiny_world import text as T
from minigpt4.tiny_world.scenes import WorldSpec
from minigpt4.tiny_world.write import scenes

log = logging.getLogger(__name__)

USER_SYMBOLS = ["###", "<Img>", "</Img>", "<ImageHere>", "$$"]
CAPTION_CUE = " caption:"
DESCRIPTION_CUE = " description:"


@dataclass(frozen=True)
class LMSpec:
    seed: int = 0
    vocab_size: int = 512
    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 384
    batch_size: int = 32
    lr: float = 2e-3
    max_steps: int = 800
    min_steps: int = 800  # the whole schedule: an annealed LM reads image tokens more reliably
    eval_every: int = 400
    gate: float = 0.97  # copy accuracy (every check; slot vectors only when soft_header > 0) to stop early
    soft_header: float = 0.5  # share of sequences whose object list is given as slot vectors (see soft_slots)
    soft_noise: float = 0.2  # std of the Gaussian noise added to each slot vector, relative to its RMS
    image_tokens: int = 8  # positions of a list of slot vectors: the vision tower's num_query_token
    world: WorldSpec = WorldSpec()


# --------------------------------------------------------------------------- tokenizer
def tokenizer_corpus(seed: int, world: WorldSpec, n: int = 3000) -> list[str]:
    rng = random.Random(f"{seed}/spm")
    lines = []
    for s in scenes(seed, "spm", n, world):
        lines.append(T.header(s) + CAPTION_CUE + " " + T.caption(s))
        lines.append(T.conversation_prompt(rng.choice(T.INSTRUCTIONS), T.header(s)) + T.description(s) + T.END_SYM)
    return lines


def write_tokenizer(folder: Path, spec: LMSpec) -> None:
    """Train SentencePiece once (fixed corpus and seed) and write a Llama tokenizer folder."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.set_random_generator_seed(spec.seed)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(tokenizer_corpus(spec.seed, spec.world)), model_writer=model,
        vocab_size=spec.vocab_size, model_type="bpe", user_defined_symbols=USER_SYMBOLS, byte_fallback=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, num_threads=1, minloglevel=2,
        hard_vocab_limit=False)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    token = lambda s: {"__type": "AddedToken", "content": s, "lstrip": False, "normalized": True,  # noqa: E731
                       "rstrip": False, "single_word": False}
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
        "bos_token": token("<s>"), "eos_token": token("</s>"), "unk_token": token("<unk>"), "pad_token": None,
        "clean_up_tokenization_spaces": False, "model_max_length": 256, "sp_model_kwargs": {}}, indent=1))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {k: {kk: vv for kk, vv in token(v).items() if kk != "__type"}
         for k, v in (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>"))}, indent=1))


def sentencepiece_size(folder: Path) -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model")).get_piece_size()


# --------------------------------------------------------------------------- pretraining text
class Segmenter:
    """Tokenizes text segments like MiniGPT4 (``add_special_tokens=False``), with a cache."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.cache: dict[str, list[int]] = {}

    def __call__(self, s: str) -> list[int]:
        ids = self.cache.get(s)
        if ids is None:
            ids = self.cache[s] = self.tok(s, add_special_tokens=False).input_ids
        return ids


def soft_slots(seg: Segmenter, scene, tokens: int, slots: int) -> list[list[int]]:
    """The object list as the vision tower lays out its ``tokens`` query tokens: position ``t`` belongs to
    slot ``t * slots // tokens`` (left to right) and is the sum of the embeddings of that object's size,
    colour and shape words ('.' for an empty slot); returned as the word ids to sum, per position."""
    out = []
    for t in range(tokens):
        j = t * slots // tokens
        if j < len(scene.objects):
            o = scene.objects[j]
            out.append([seg(" " + w)[-1] for w in (o.size, o.colour, o.shape)])
        else:
            out.append([seg(".")[-1]])
    return out


class Soft(list):
    """Token ids where some positions are soft: ``spec[k] = (position, word ids to sum)``."""

    def __init__(self, ids, spec=()):
        super().__init__(ids)
        self.spec = list(spec)


Layout = tuple[int, int] | None  # (positions, slots) of a list of slot vectors; None: the list as text


def header_ids(seg: Segmenter, scene, soft: Layout, start: int) -> Soft:
    if not soft:
        return Soft(seg(T.header(scene)))
    slots = soft_slots(seg, scene, *soft)
    return Soft([seg.tok.pad_token_id or 0] * len(slots), [(start + k, w) for k, w in enumerate(slots)])


def listed(seg: Segmenter, scene, cue: str, soft: Layout = None) -> Soft:
    """``<s>`` + the object list + ``cue`` (text: tokenized as one string, as MiniGPT4 tokenizes a prompt)."""
    if not soft:
        return Soft([seg.tok.bos_token_id] + seg(T.header(scene) + cue))
    head = header_ids(seg, scene, soft, 1)
    return Soft([seg.tok.bos_token_id] + head + seg(cue), head.spec)


def caption_context(seg: Segmenter, scene, soft: Layout = None) -> Soft:
    return listed(seg, scene, CAPTION_CUE, soft)


def describe_prompt(image: str = "<ImageHere>") -> str:
    """The curation's describe turn (the paper's prompt in the paper's format)."""
    return PAPER_TEMPLATE.format(DESCRIBE_INSTRUCTION).replace("<ImageHere>", image)


def chat_context(seg: Segmenter, scene, instruction: str | None, soft: Layout = None) -> Soft:
    """The stage-2 conversation prompt, or the describe prompt when ``instruction`` is None, with the
    object list where the image goes."""
    prompt = T.conversation_prompt(instruction) if instruction is not None else describe_prompt()
    before, after = prompt.split("<ImageHere>")
    start = [seg.tok.bos_token_id] + seg(before)
    head = header_ids(seg, scene, soft, len(start))
    return Soft(start + head + seg(after), head.spec)


def sequence(seg: Segmenter, scene, kind: str, rng: random.Random, soft: Layout = None) -> tuple[Soft, int]:
    """(token ids, context length): the loss covers only what follows the context, so the unpredictable
    object list never dominates the gradient and the model spends its capacity on reading it."""
    eos = seg.tok.eos_token_id
    if kind == "chat" and rng.random() < DESCRIBE_SHARE:
        kind = "describe"
    if kind == "caption":
        context, answer = caption_context(seg, scene, soft), seg(T.caption(scene) + "\n")
    elif kind == "description":
        context, answer = listed(seg, scene, DESCRIPTION_CUE, soft), seg(T.description(scene) + "\n")
    else:
        context = chat_context(seg, scene, rng.choice(T.INSTRUCTIONS) if kind == "chat" else None, soft)
        answer = seg(T.description(scene) + T.END_SYM)
    return Soft(context + answer + [eos], context.spec), len(context)


KINDS = (("caption", 0.4), ("description", 0.2), ("chat", 0.4))
DESCRIBE_SHARE = 0.1  # of the conversations: the curation's describe prompt, next to the four stage-2 instructions


def soft_embeds(model, ids: torch.Tensor, seqs: list, noise: float):
    """Input embeddings of ``ids`` with every soft position of ``seqs`` replaced by its slot vector (the sum
    of its words' embeddings) plus Gaussian noise of ``noise`` times the vector's RMS."""
    table = model.get_input_embeddings().weight
    embeds = table[ids]
    rows, cols, vecs = [], [], []
    for i, (s, _) in enumerate(seqs):
        for pos, words in getattr(s, "spec", ()):
            rows.append(i)
            cols.append(pos)
            vecs.append(table[torch.tensor(words, device=table.device)].sum(0))
    if not rows:
        return embeds
    vecs = torch.stack(vecs)
    if noise > 0:
        rms = vecs.detach().pow(2).mean(-1, keepdim=True).sqrt()
        vecs = vecs + noise * rms * torch.randn(vecs.shape, device=vecs.device)
    embeds = embeds.clone()
    embeds[torch.tensor(rows, device=embeds.device), torch.tensor(cols, device=embeds.device)] = vecs
    return embeds


def batch_tensors(seqs: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(s) for s, _ in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, (s, n_context) in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        att[i, : len(s)] = 1
        labels[i, n_context: len(s)] = ids[i, n_context: len(s)]
    return ids, att, labels


# --------------------------------------------------------------------------- copy accuracy (the gate)
def left_pad(contexts: list, pad_id: int) -> tuple[list[Soft], torch.Tensor]:
    """Contexts left-padded to one width (their soft positions moved along), and the attention mask."""
    width = max(len(c) for c in contexts)
    padded = [Soft([pad_id] * (width - len(c)) + c, [(pos + width - len(c), w) for pos, w in getattr(c, "spec", ())])
              for c in contexts]
    return padded, torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts])


@torch.no_grad()
def greedy(model, contexts: list[list[int]], pad_id: int, max_new_tokens: int, stop_ids: set[int]) -> list[list[int]]:
    """Plain greedy decoding with a KV cache over left-padded contexts (soft positions as slot vectors)."""
    padded, att = left_pad(contexts, pad_id)
    ids = torch.tensor(padded)
    common = dict(attention_mask=att, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id,
                  eos_token_id=sorted(stop_ids), temperature=None, top_p=None, top_k=None)
    if any(c.spec for c in padded):  # generate() returns only the new tokens when given embeddings
        return model.generate(inputs_embeds=soft_embeds(model, ids, [(c, 0) for c in padded], 0.0), **common).tolist()
    return [row[ids.shape[1]:].tolist() for row in model.generate(input_ids=ids, **common)]


def copy_accuracy(model, tokenizer, test_scenes, layout: tuple[int, int] = (8, 2)) -> dict[str, float]:
    """Greedy accuracy of reading an object list: captions, conversations, the describe prompt (the list as
    text) and conversations with the list as slot vectors (``layout``, no noise)."""
    seg = Segmenter(tokenizer)
    pad = tokenizer.convert_tokens_to_ids("$$")
    nl = seg("\n")[-1]
    stops = {tokenizer.eos_token_id, nl, tokenizer.convert_tokens_to_ids("###")}
    caps = greedy(model, [caption_context(seg, s) for s in test_scenes], pad, 24, stops)
    chats = greedy(model, [chat_context(seg, s, T.INSTRUCTIONS[i % 4]) for i, s in enumerate(test_scenes)],
                   pad, 64, stops)
    described = greedy(model, [chat_context(seg, s, None) for s in test_scenes], pad, 64, stops)
    soft = greedy(model, [chat_context(seg, s, T.INSTRUCTIONS[i % 4], layout) for i, s in enumerate(test_scenes)],
                  pad, 64, stops)
    text = lambda ids: tokenizer.decode([i for i in ids if i != pad], skip_special_tokens=True)  # noqa: E731
    cap_ok = [T.caption_correct(text(c), s) for c, s in zip(caps, test_scenes)]
    chat_ok = lambda answers: [T.description_matches(T.parse_description(text(c).split("###")[0]), s)  # noqa: E731
                               for c, s in zip(answers, test_scenes)]
    return {"caption": sum(cap_ok) / len(cap_ok), "chat": _mean(chat_ok(chats)), "describe": _mean(chat_ok(described)),
            "chat_slots": _mean(chat_ok(soft))}


def _mean(values: list) -> float:
    return sum(values) / len(values)


# --------------------------------------------------------------------------- pretraining
def build_lm(spec: LMSpec, vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
                      num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
                      num_key_value_heads=spec.num_heads, max_position_embeddings=256, tie_word_embeddings=True,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0, rms_norm_eps=1e-6)
    return LlamaForCausalLM(cfg)


def lr_at(step: int, spec: LMSpec) -> float:
    warm = 100
    if step < warm:
        return spec.lr * (step + 1) / warm
    return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / (spec.max_steps - warm)))))


def pretrain_lm(folder: Path, spec: LMSpec, threads: int = 1, progress=None) -> dict:
    """Tokenizer + LM into ``folder`` (a Hugging Face folder). Stops at ``max_steps`` or, after
    ``min_steps``, as soon as text-only copy accuracy reaches ``gate`` (checked every ``eval_every``)."""
    from transformers import AutoTokenizer

    torch.set_num_threads(threads)
    torch.manual_seed(spec.seed)
    folder = Path(folder)
    write_tokenizer(folder, spec)
    tok = AutoTokenizer.from_pretrained(str(folder))
    if len(tok) != sentencepiece_size(folder):
        raise RuntimeError(f"{folder}: tokenizer has {len(tok)} tokens, SentencePiece model {sentencepiece_size(folder)}")
    seg, rng = Segmenter(tok), random.Random(f"{spec.seed}/lm")
    pad = tok.convert_tokens_to_ids("$$")
    pool = scenes(spec.seed, "lm", 20000, spec.world)
    test = scenes(spec.seed, "lm-test", 100, spec.world)
    model = build_lm(spec, len(tok))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    rest = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                            lr=spec.lr, betas=(0.9, 0.98))
    kinds, weights = zip(*KINDS)
    layout = (spec.image_tokens, spec.world.max_objects)
    history, step = [], 0
    for step in range(1, spec.max_steps + 1):
        model.train()
        for group in opt.param_groups:
            group["lr"] = lr_at(step - 1, spec)
        seqs = [sequence(seg, rng.choice(pool), rng.choices(kinds, weights)[0], rng,
                         layout if spec.soft_header > 0 and rng.random() < spec.soft_header else None)
                for _ in range(spec.batch_size)]
        ids, att, labels = batch_tensors(seqs, pad)
        if any(s.spec for s, _ in seqs):
            loss = model(inputs_embeds=soft_embeds(model, ids, seqs, spec.soft_noise), attention_mask=att,
                         labels=labels).loss
        else:
            loss = model(input_ids=ids, attention_mask=att, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if progress is not None:
            progress(step, loss.item())
        if step % spec.eval_every == 0 or step == spec.max_steps:
            model.eval()
            acc = copy_accuracy(model, tok, test, layout)
            history.append({"step": step, "loss": loss.item(), **acc})
            log.info("LM step %d loss %.3f copy %s", step, loss.item(), acc)
            gated = [v for k, v in acc.items() if k != "chat_slots" or spec.soft_header > 0]
            if step >= spec.min_steps and min(gated) >= spec.gate:
                break
    model.eval()
    model.save_pretrained(str(folder))
    report = {"steps": step, "history": history, "copy_accuracy": history[-1] if history else None,
              "parameters": sum(p.numel() for p in model.parameters()), "spec": asdict(spec)}
    (folder / "pretraining.json").write_text(json.dumps(report, indent=1))
    return report
