"""Conversation templates and ``Chat``, with the original's API.

``CONV_VISION_Vicuna0`` and ``CONV_VISION_LLama2`` render byte for byte as the original demo's; note they
differ from the training prompts (system preamble, no space before ``###``). ``training_conversation``
renders the exact training template (``prompt_template`` + ``end_sym``), which is what models trained
here answer best to.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from enum import Enum, auto
from pathlib import Path

import torch
from PIL import Image

from minigpt4.models.prompting import IMAGE_PLACEHOLDER

log = logging.getLogger(__name__)
IMAGE_MESSAGE = f"<Img>{IMAGE_PLACEHOLDER}</Img>"


class SeparatorStyle(Enum):
    SINGLE = auto()  # system + sep, then role + message + sep per turn
    TWO = auto()  # separators alternate between sep and sep2
    TEMPLATE = auto()  # each user turn through prompt_template, each answer followed by sep (end_sym)


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

    def get_prompt(self) -> str:
        if self.sep_style == SeparatorStyle.TEMPLATE:
            out = self.system
            for role, msg in self.messages:
                if role == self.roles[0]:
                    out += self.prompt_template.format(msg)
                elif msg is not None:
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


class Chat:
    """``upload_img`` -> ``ask`` -> ``answer``, as the original; the model does the batched work."""

    def __init__(self, model, vis_processor, device=None):
        self.model = model
        self.vis_processor = vis_processor
        self.device = torch.device(device) if device is not None else model.device

    def ask(self, text: str, conv: Conversation) -> None:
        last = conv.messages[-1] if conv.messages else None
        if last is not None and last[0] == conv.roles[0] and last[1] and last[1].endswith("</Img>"):
            last[1] = " ".join([last[1], text])
        else:
            conv.append_message(conv.roles[0], text)

    def _image_tensor(self, image) -> torch.Tensor:
        if isinstance(image, (str, Path)):
            image = Image.open(image).convert("RGB")
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

    def context(self, conv: Conversation, img_list: list) -> tuple[torch.Tensor, torch.Tensor]:
        """``inputs_embeds`` [1, L, H] and attention [1, L] for the current prompt."""
        prompt = conv.get_prompt()
        layout, attention = self.model.context_layout([prompt], [len(img_list)])
        layout = layout.to(self.model.device)
        images = torch.cat(img_list, dim=1) if img_list else torch.zeros(0, 0)
        from minigpt4.models.prompting import embed_layout

        return embed_layout(layout, images, self.model.embed_tokens), attention.to(self.model.device)

    def answer(self, conv: Conversation, img_list: list, max_new_tokens=300, num_beams=1, min_length=1, top_p=0.9,
               repetition_penalty=1.0, length_penalty=1, temperature=1.0, max_length=2000, do_sample=True,
               seed=None, streamer=None):
        """Generate the assistant's reply; returns ``(text, token ids)`` and records it in ``conv``."""
        conv.append_message(conv.roles[1], None)
        embeds, attention = self.context(conv, img_list)
        budget = max_length - max_new_tokens
        if embeds.shape[1] > budget:
            log.warning("context of %d tokens exceeds max_length - max_new_tokens = %d; keeping the last %d",
                        embeds.shape[1], budget, budget)
            embeds, attention = embeds[:, -budget:], attention[:, -budget:]
        stops = [conv.stop_str] if conv.stop_str else []
        ids = self.model.generate_ids(embeds, attention, max_new_tokens=max_new_tokens, num_beams=num_beams,
                                      do_sample=do_sample, temperature=temperature, top_p=top_p,
                                      repetition_penalty=repetition_penalty, length_penalty=length_penalty,
                                      min_length=min_length, stop_strings=stops, streamer=streamer, seed=seed)[0]
        text = self.model.decode(ids, stop_strings=stops)
        conv.messages[-1][1] = text
        return text, ids.cpu().numpy()
