"""Prompts in the LLM's own chat format: ``model.chat_template: tokenizer`` (``--template tokenizer``).

The tokenizer's ``apply_chat_template`` renders every prompt, for training and for chat, with the image
placeholder (``<Img><ImageHere></Img>``) inside the user's turn; the rendered text is used as is (a BOS the
template writes is part of it, so no second BOS is added). The *end of turn* is what the template writes
after an assistant's answer (``<|eot_id|>`` for Llama 3, ``<|im_end|>`` for ChatML, trailing whitespace
left out): training appends it to each answer in place of ``end_sym``, so the labels cover the answer and
the end of turn only, and generation stops on it.
"""
from __future__ import annotations

from minigpt4.errors import UserError

CONFIG_VALUES = ("tokenizer",)
_PROBE_USER = "minigpt4 probe question"
_PROBE_ANSWER = "minigpt4 probe answer"


class ChatTemplateError(UserError, ValueError):
    """A chat template this library cannot use (none in the tokenizer, or no recognisable end of turn)."""


class TokenizerTemplate:
    """Renders conversations with ``tokenizer.apply_chat_template``. Immutable: copies share it."""

    def __init__(self, tokenizer, what: str = "model.chat_template=tokenizer"):
        if not getattr(tokenizer, "chat_template", None):
            raise ChatTemplateError(f"{what}: the LLM's tokenizer has no chat template (chat_template in "
                                    f"tokenizer_config.json or chat_template.jinja in model.llama_model); "
                                    f"use another template or add one")
        self.tokenizer = tokenizer
        self.what = what
        self.end_of_turn = self._find_end_of_turn()

    def __deepcopy__(self, memo):
        return self

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def user_prompt(self, text: str) -> str:
        """One user turn followed by the assistant's generation prompt (what training and captions use)."""
        return self.render([{"role": "user", "content": text}])

    def _find_end_of_turn(self) -> str:
        user = [{"role": "user", "content": _PROBE_USER}]
        prompt = self.render(user)
        full = self.render(user + [{"role": "assistant", "content": _PROBE_ANSWER}], add_generation_prompt=False)
        if not full.startswith(prompt + _PROBE_ANSWER):
            raise ChatTemplateError(f"{self.what}: the tokenizer's chat template does not render an answer right "
                                    f"after its generation prompt, so answers cannot be trained or stopped on it")
        end = full[len(prompt) + len(_PROBE_ANSWER):].strip() or (self.tokenizer.eos_token or "")
        if not end:
            raise ChatTemplateError(f"{self.what}: the tokenizer's chat template ends an answer with nothing and "
                                    f"the tokenizer has no eos_token, so answers cannot be stopped")
        return end


def chat_template_from_config(value, tokenizer) -> TokenizerTemplate | None:
    """``model.chat_template``: null (the default: ``prompt_template`` + ``end_sym``) or ``tokenizer``."""
    if value in (None, "", False):
        return None
    if value not in CONFIG_VALUES:
        raise ChatTemplateError(f"model.chat_template must be one of {list(CONFIG_VALUES)} or null, got {value!r}")
    return TokenizerTemplate(tokenizer)
