"""model.chat_template: tokenizer / --template tokenizer: prompts in the LLM tokenizer's own chat template.

The micro fixture LLM is copied with a Llama-3-style and a ChatML-style chat template (their turn markers
added as special tokens, the embeddings grown to match)."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fixture_utils import fixture_dirs, model_cfg
from minigpt4.errors import UserError
from minigpt4.conversation.conversation import Chat
from minigpt4.inference import caption_prompt, conversation_from_config
from minigpt4.models import MiniGPT4
from minigpt4.models import prompting as P
from minigpt4.models.chat_template import ChatTemplateError, TokenizerTemplate

FX = fixture_dirs()[0]
TEMPLATES = {
    "llama3": ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
               "{{ m['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
               "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}", "<|eot_id|>"),
    "chatml": ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}", "<|im_end|>"),
}
MARKERS = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|im_start|>", "<|im_end|>"]
QUESTION = "<Img><ImageHere></Img> What is in the picture?"


@pytest.fixture(scope="module")
def llm_folders(tmp_path_factory) -> dict:
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(FX / "llm"))
    tok.add_special_tokens({"additional_special_tokens": MARKERS})
    llm = AutoModelForCausalLM.from_pretrained(str(FX / "llm"), dtype=torch.float32)
    llm.resize_token_embeddings(len(tok), mean_resizing=False)
    folders = {}
    for name, (template, _) in TEMPLATES.items():
        folder = tmp_path_factory.mktemp(name)
        tok.chat_template = template
        tok.save_pretrained(str(folder))
        llm.save_pretrained(str(folder))
        folders[name] = folder
    return folders


def build(folder, **overrides) -> MiniGPT4:
    torch.manual_seed(0)
    return MiniGPT4.from_config(model_cfg(FX, llama_model=str(folder), chat_template="tokenizer", max_txt_len=40,
                                          **overrides))


def render(tok, messages, gen=True) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_training_prompt_and_labels(llm_folders, kind):
    model = build(llm_folders[kind])
    tok, eot = model.llama_tokenizer, TEMPLATES[kind][1]
    assert model.end_sym == eot
    answers = ["A red circle.", "Two blue squares side by side."]
    batch = model.training_inputs({"image": torch.zeros(2, 3, 224, 224), "answer": answers,
                                   "instruction_input": [QUESTION, "<Img><ImageHere></Img> Describe it."]})
    layout, labels, attention = batch["layout"], batch["labels"], batch["attention_mask"]
    n = model.vision.num_tokens
    for row, (question, answer) in enumerate(zip([QUESTION, "<Img><ImageHere></Img> Describe it."], answers)):
        prompt = render(tok, [{"role": "user", "content": question}])
        assert prompt.count(P.IMAGE_PLACEHOLDER) == 1
        before, after = prompt.split(P.IMAGE_PLACEHOLDER)
        ids = lambda s: tok(s, add_special_tokens=False).input_ids  # noqa: E731
        wanted = ids(before) + [P.IMAGE_MARKER] * n + ids(after) + ids(answer + eot)
        length = int(attention[row].sum())
        assert layout[row, :length].tolist() == wanted  # no BOS of our own: the template writes it (or none)
        assert (layout[row, :length] == tok.bos_token_id).sum() == (1 if kind == "llama3" else 0)
        labelled = labels[row][labels[row] != P.IGNORE_INDEX].tolist()
        assert labelled == ids(answer + eot)  # the answer and the end of turn, nothing else
        assert labelled[-1] == tok.convert_tokens_to_ids(eot)
        assert tok.decode(labelled) == answer + eot
    full = render(tok, [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": answers[0]}],
                  gen=False)
    assert full.rstrip() == render(tok, [{"role": "user", "content": QUESTION}]) + answers[0] + eot


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_chat_prompt_is_the_tokenizers_and_generation_stops_at_end_of_turn(llm_folders, kind):
    model = build(llm_folders[kind])
    tok, eot = model.llama_tokenizer, TEMPLATES[kind][1]
    conv = conversation_from_config(model_cfg(FX, llama_model=str(llm_folders[kind])), "tokenizer", tok)
    chat, images = Chat(model, vis_processor=None), []
    chat.upload_img(torch.zeros(3, 224, 224), conv, images)
    chat.ask("What is in the picture?", conv)
    conv.append_message(conv.roles[1], None)
    user = [{"role": "user", "content": QUESTION}]
    assert conv.get_prompt() == render(tok, user)  # byte-exact, placeholder in place
    conv.messages.pop()

    # make the end-of-turn token win where the 3rd greedy token would: generation must stop there
    free, first = chat.answer(conv.copy(), list(images), max_new_tokens=12, do_sample=False)
    first = first.tolist()
    assert len(first) == 12 and eot not in free
    head = model.llama_model.lm_head.weight
    with torch.no_grad():
        head[tok.convert_tokens_to_ids(eot)] = 2 * head[first[2]]
    text, ids = chat.answer(conv, images, max_new_tokens=12, do_sample=False)
    ids = ids.tolist()
    assert len(ids) <= 3 and ids[-1] == tok.convert_tokens_to_ids(eot)
    assert ids[:-1] == first[: len(ids) - 1] and eot not in text

    chat.ask("And the colour?", conv)
    conv.append_message(conv.roles[1], None)
    history = user + [{"role": "assistant", "content": text}, {"role": "user", "content": "And the colour?"}]
    assert conv.get_prompt() == render(tok, history)


def test_caption_prompt_and_template_choice(llm_folders):
    folder = llm_folders["chatml"]
    tok = AutoTokenizer.from_pretrained(str(folder))
    cfg = model_cfg(FX, llama_model=str(folder), chat_template="tokenizer")
    assert caption_prompt(cfg, "How many?") == render(tok, [{"role": "user", "content": "<Img><ImageHere></Img> How many?"}])
    assert conversation_from_config(cfg).stop_str == "<|im_end|>"  # auto follows model.chat_template
    plain = model_cfg(FX, prompt_template="###Human: {} ###Assistant: ", end_sym="###")
    assert conversation_from_config(plain).stop_str == "###"


def test_a_tokenizer_without_a_template_is_one_clear_error():
    tok = AutoTokenizer.from_pretrained(str(FX / "llm"))
    with pytest.raises(ChatTemplateError, match="model.chat_template=tokenizer: the LLM's tokenizer has no chat"):
        TokenizerTemplate(tok)
    with pytest.raises(UserError, match="model.chat_template"):
        MiniGPT4.from_config(model_cfg(FX, chat_template="chatml"))
