"""Conversation templates and ``Chat``, with the original's API.

``CONV_VISION_Vicuna0`` and ``CONV_VISION_LLama2`` render byte for byte as the original demo's; note they
differ from the training prompts (system preamble, no space before ``###``). ``training_conversation``
renders the exact training template (``prompt_template`` + ``end_sym``), which is what models trained
here answer best to. ``tokenizer_conversation`` renders through the LLM tokenizer's own chat template.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from enum import Enum, auto
from pathlib import Path

import torch
from PIL import Image

from minigpt4.conversation.history import ContextTooLongError, fit_turns  # noqa: F401 (re-exported)
from minigpt4.conversation.settings import check_generation_settings
from minigpt4.conversation.streaming import CancellableStreamer, stream_from
from minigpt4.images import DEFAULT_MAX_IMAGE_PIXELS, UnreadableImage, open_image
from minigpt4.models.prompting import IMAGE_PLACEHOLDER

log = logging.getLogger(__name__)
IMAGE_MESSAGE = f"<Img>{IMAGE_PLACEHOLDER}</Img>"
# what a user-typed <ImageHere> becomes: the same text to a reader, never an image slot
TYPED_PLACEHOLDER = IMAGE_PLACEHOLDER.replace("<", "<\u200b", 1)


class SeparatorStyle(Enum):
    SINGLE = auto()  # system + sep, then role + message + sep per turn
    TWO = auto()  # separators alternate between sep and sep2
    TEMPLATE = auto()  # each user turn through prompt_template, each answer followed by sep (end_sym)
    TOKENIZER = auto()  # the whole conversation through the LLM tokenizer's apply_chat_template (renderer)


@dataclasses.dataclass
class Conversation:
    system: str
    roles: tuple[str, str]
    messages: list[list]
    offset: int = 2
    sep_style: SeparatorStyle = SeparatorStyle.SINGLE
    sep: str = "###"
    sep2: str | None = None
    prompt_template: str | None = None
    stop_str: str | None = None  # text that ends an answer; None = EOS only
    skip_next: bool = False
    conv_id: object = None
    renderer: object = None  # a TokenizerTemplate, for SeparatorStyle.TOKENIZER

    def chat_messages(self) -> tuple[list[dict], bool]:
        """``[{"role", "content"}]`` for a chat template (consecutive user messages joined by a space, as
        the training template does) and whether the assistant's turn is open (an empty last message)."""
        out = [{"role": "system", "content": self.system}] if self.system else []
        user, open_turn = [], False
        for role, msg in self.messages:
            if role == self.roles[0]:
                user.append(msg)
                continue
            if user:
                out.append({"role": "user", "content": " ".join(user)})
                user = []
            if msg is None:
                open_turn = True
            else:
                out.append({"role": "assistant", "content": msg})
        if user:
            out.append({"role": "user", "content": " ".join(user)})
        return out, open_turn

    def get_prompt(self) -> str:
        if self.sep_style == SeparatorStyle.TOKENIZER:
            messages, open_turn = self.chat_messages()
            return self.renderer.render(messages, add_generation_prompt=open_turn)
        if self.sep_style == SeparatorStyle.TEMPLATE:
            out, user = self.system, []
            for role, msg in self.messages + [[None, None]]:
                if role == self.roles[0]:
                    user.append(msg)  # consecutive user messages (several images) share one template
                    continue
                if user:
                    out += self.prompt_template.format(" ".join(user))
                    user = []
                if role is not None and msg is not None:
                    out += msg + self.sep
            return out
        seps = [self.sep, self.sep] if self.sep_style == SeparatorStyle.SINGLE else [self.sep, self.sep2]
        out = self.system + seps[0]
        for i, (role, msg) in enumerate(self.messages):
            out += role + msg + seps[i % 2] if msg else role
        return out

    def append_message(self, role: str, message: str | None) -> None:
        self.messages.append([role, message])

    def to_gradio_chatbot(self) -> list[list]:
        pairs = []
        for i, (_, msg) in enumerate(self.messages[self.offset:]):
            if i % 2 == 0:
                pairs.append([msg, None])
            else:
                pairs[-1][-1] = msg
        return pairs

    def copy(self) -> "Conversation":
        return copy.deepcopy(self)

    def dict(self) -> dict:
        return dataclasses.asdict(self)


_SYSTEM = ("Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I provide "
           "it to you. Please answer my questions.")

CONV_VISION_Vicuna0 = Conversation(system=_SYSTEM, roles=("Human: ", "Assistant: "), messages=[], offset=2,
                                   sep_style=SeparatorStyle.SINGLE, sep="###", stop_str="###")

CONV_VISION_LLama2 = Conversation(system=_SYSTEM, roles=("<s>[INST] ", " [/INST] "), messages=[], offset=2,
                                  sep_style=SeparatorStyle.SINGLE, sep="", stop_str=None)

CONV_VISION = CONV_VISION_Vicuna0
CONV_DICT = {"pretrain_vicuna0": CONV_VISION_Vicuna0, "pretrain_llama2": CONV_VISION_LLama2}


def training_conversation(prompt_template: str = "###Human: {} ###Assistant: ", end_sym: str = "###") -> Conversation:
    """A conversation that renders exactly as stage-2 training: ``prompt_template.format(user) + answer + end_sym``."""
    return Conversation(system="", roles=("Human", "Assistant"), messages=[], offset=0,
                        sep_style=SeparatorStyle.TEMPLATE, sep=end_sym, prompt_template=prompt_template,
                        stop_str=end_sym.strip() or None)


def tokenizer_conversation(tokenizer) -> Conversation:
    """A conversation rendered by the LLM tokenizer's own chat template; answers stop at its end of turn."""
    from minigpt4.models.chat_template import TokenizerTemplate

    template = TokenizerTemplate(tokenizer, what="--template tokenizer")
    return Conversation(system="", roles=("user", "assistant"), messages=[], offset=0,
                        sep_style=SeparatorStyle.TOKENIZER, sep="", renderer=template,
                        stop_str=template.end_of_turn)


class Chat:
    """``upload_img`` -> ``ask`` -> ``answer`` / ``stream_answer``, as the original; the model does the work.

    Several images may be uploaded into one conversation (each adds an image message and an embedding).
    When the history outgrows ``max_length - max_new_tokens``, whole turns are dropped oldest first
    (with their images); the system text, the BOS and image tokens are never cut. ``<ImageHere>`` typed in
    a question is text: it gets a zero-width space after its ``<`` so it never takes an image's place.
    Generation settings out of range raise :class:`GenerationSettingsError` naming the setting.
    """

    def __init__(self, model, vis_processor, device=None):
        self.model = model
        self.vis_processor = vis_processor
        self.device = torch.device(device) if device is not None else model.device

    def ask(self, text: str, conv: Conversation) -> None:
        text = text.replace(IMAGE_PLACEHOLDER, TYPED_PLACEHOLDER)
        last = conv.messages[-1] if conv.messages else None
        if last is not None and last[0] == conv.roles[0] and last[1] and last[1].endswith("</Img>"):
            last[1] = " ".join([last[1], text])
        else:
            conv.append_message(conv.roles[0], text)

    def _image_tensor(self, image) -> torch.Tensor:
        if isinstance(image, (str, Path)):
            image = load_image(image)
        if isinstance(image, Image.Image):
            image = self.vis_processor(image.convert("RGB"))
        if not torch.is_tensor(image):
            raise TypeError(f"upload_img takes a path, a PIL image or a tensor, got {type(image).__name__}")
        return (image.unsqueeze(0) if image.dim() == 3 else image).to(self.device)

    def upload_img(self, image, conv: Conversation, img_list: list) -> str:
        embeds, _ = self.model.encode_img(self._image_tensor(image))
        img_list.append(embeds)
        conv.append_message(conv.roles[0], IMAGE_MESSAGE)
        return "Received."

    def context_length(self, prompt: str, num_images: int) -> int:
        """Positions the prompt takes in the LLM (BOS, text tokens and image tokens)."""
        return int(self.model.context_layout([prompt], [num_images])[0].shape[1])

    def context(self, conv: Conversation, img_list: list,
                budget: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``inputs_embeds`` [1, L, H] and attention [1, L] for the current prompt; with ``budget``, the
        oldest whole turns are left out until it fits (see :func:`fit_turns`)."""
        if budget is not None:
            conv, img_list, _ = fit_turns(conv, img_list, self.context_length, budget)
        images = torch.cat(img_list, dim=1) if img_list else None
        return self.model.embed_prompts([conv.get_prompt()], images, [len(img_list)])

    @staticmethod
    def stop_strings(conv: Conversation) -> list[str]:
        """The template's stop: ``###`` (Vicuna v0), end_sym (training template), none = EOS (Llama-2)."""
        return [conv.stop_str] if conv.stop_str else []

    def _prepare(self, conv, img_list, max_new_tokens, max_length):
        conv.append_message(conv.roles[1], None)
        try:
            return self.context(conv, img_list, budget=max_length - max_new_tokens)
        except Exception:
            conv.messages.pop()
            raise

    def answer(self, conv: Conversation, img_list: list, max_new_tokens=300, num_beams=1, min_length=1, top_p=0.9,
               repetition_penalty=1.0, length_penalty=1, temperature=1.0, max_length=2000, do_sample=True,
               seed=None, streamer=None):
        """Generate the assistant's reply; returns ``(text, token ids)`` and records it in ``conv``.
        ``seed`` makes sampling reproducible (same seed, same text)."""
        check_generation_settings(num_beams=num_beams, max_new_tokens=max_new_tokens, top_p=top_p,
                                  temperature=temperature, seed=seed)
        embeds, attention = self._prepare(conv, img_list, max_new_tokens, max_length)
        stops = self.stop_strings(conv)
        gen = dict(max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=do_sample, temperature=temperature,
                   top_p=top_p, repetition_penalty=repetition_penalty, length_penalty=length_penalty,
                   min_length=min_length, seed=seed)
        try:
            ids = self.model.generate_ids(embeds, attention, stop_strings=stops, streamer=streamer, **gen)[0]
        except Exception:
            conv.messages.pop()
            raise
        text = self.model.decode(ids, stop_strings=stops)
        conv.messages[-1][1] = text
        return text, ids.cpu().numpy()

    def stream_answer(self, conv: Conversation, img_list: list, max_new_tokens=300, num_beams=1, min_length=1,
                      top_p=0.9, repetition_penalty=1.0, length_penalty=1, temperature=1.0, max_length=2000,
                      do_sample=True, seed=None, timeout=None):
        """Like :meth:`answer`, but yields the reply as text pieces while it is generated (transformers'
        ``TextIteratorStreamer`` fed by ``generate`` in a thread). The pieces concatenate to the final
        text, which is stored in ``conv`` when the stream ends. Beam search cannot stream: with
        ``num_beams > 1`` the whole reply comes as one piece."""
        kwargs = dict(max_new_tokens=max_new_tokens, num_beams=num_beams, min_length=min_length, top_p=top_p,
                      repetition_penalty=repetition_penalty, length_penalty=length_penalty,
                      temperature=temperature, max_length=max_length, do_sample=do_sample, seed=seed)
        check_generation_settings(num_beams=num_beams, max_new_tokens=max_new_tokens, top_p=top_p,
                                  temperature=temperature, seed=seed)
        if num_beams > 1:
            text, _ = self.answer(conv, img_list, **kwargs)
            if text:
                yield text
            return
        embeds, attention = self._prepare(conv, img_list, max_new_tokens, max_length)
        stops = self.stop_strings(conv)

        gen = {k: v for k, v in kwargs.items() if k != "max_length"}

        def generate(streamer):
            return self.model.generate_ids(embeds, attention, stop_strings=stops, streamer=streamer, **gen)

        try:
            streamer = self.model.text_streamer(CancellableStreamer, skip_prompt=True, timeout=timeout,
                                                skip_special_tokens=False)
            ids = yield from stream_from(streamer, generate, stops)
        except BaseException:  # includes the consumer closing the stream early
            conv.messages.pop()
            raise
        conv.messages[-1][1] = self.model.decode(ids[0], stop_strings=stops)


def load_image(path, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Open an image file fully as RGB (16-bit, palette, transparent and CMYK images converted correctly, at
    most ``max_pixels``), or raise :class:`UnreadableImage` (a ``ValueError``) naming the file and the reason."""
    if not Path(path).exists():
        raise UnreadableImage(f"no such file: {path}")
    if Path(path).is_dir():
        raise UnreadableImage(f"{path} is a folder, not an image file")
    return open_image(path, max_pixels=max_pixels)
