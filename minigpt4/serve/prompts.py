"""OpenAI messages -> the model's conversation template, through the same calls ``Chat`` makes.

A user message's parts are applied in order: an image part is an uploaded image (``Chat.upload_img``
adds the image message ``<Img><ImageHere></Img>``), text is ``Chat.ask``; an assistant message is a
recorded reply. A first ``system`` (or ``developer``) message replaces the template's system text. The
prompt is then fitted to ``max_length - max_tokens`` as ``Chat.answer`` does (oldest whole turns dropped
with their images), so a conversation gets exactly the prompt text ``Chat`` would build for it.
"""
from __future__ import annotations

import dataclasses

import torch

from minigpt4.conversation.conversation import IMAGE_MESSAGE, Chat, Conversation
from minigpt4.conversation.history import ContextTooLongError, fit_turns
from minigpt4.serve.errors import APIError, bad_request
from minigpt4.serve.images import ImagePolicy, load_image_url
from minigpt4.serve.schema import ImagePart, Message


@dataclasses.dataclass
class Prompt:
    text: str  # the template's prompt with one <ImageHere> per image
    images: torch.Tensor | None  # [k, 3, S, S] processed pixels
    stop_strings: list[str]  # the template's
    context_tokens: int  # positions the prompt takes in the LLM (BOS, text and image tokens)


def _text(content, param: str) -> str:
    if isinstance(content, str):
        return content
    if any(isinstance(p, ImagePart) for p in content):
        raise bad_request("images are only accepted in user messages", param=param)
    return " ".join(p.text for p in content)


def build_conversation(chat: Chat, template: Conversation, messages: list[Message], policy: ImagePolicy,
                       max_images: int) -> tuple[Conversation, list]:
    """The conversation and its images (PIL, in order) for ``messages``."""
    conv, images = template.copy(), []
    for i, msg in enumerate(messages):
        param = f"messages[{i}]"
        if msg.role in ("system", "developer"):
            if i != 0:
                raise bad_request("a system message is only accepted as the first message", param=param)
            conv.system = _text(msg.content, f"{param}.content")
        elif msg.role == "assistant":
            conv.append_message(conv.roles[1], _text(msg.content, f"{param}.content"))
        else:
            parts = [msg.content] if isinstance(msg.content, str) else msg.content
            if not any(isinstance(p, ImagePart) or (p if isinstance(p, str) else p.text).strip() for p in parts):
                raise bad_request("a user message needs text or an image", param=f"{param}.content")
            texts: list[str] = []
            for j, part in enumerate(parts):
                if isinstance(part, ImagePart):
                    if texts:
                        chat.ask(" ".join(texts), conv)
                        texts = []
                    if len(images) >= max_images:
                        raise bad_request(f"at most {max_images} images per request", param=f"{param}.content")
                    images.append(load_image_url(part.image_url.url, policy, f"{param}.content[{j}].image_url"))
                    conv.append_message(conv.roles[0], IMAGE_MESSAGE)  # what Chat.upload_img records
                else:
                    texts.append(part if isinstance(part, str) else part.text)
            if texts:
                chat.ask(" ".join(texts), conv)
    if not conv.messages or conv.messages[-1][0] != conv.roles[0]:
        raise bad_request("the last message must be a user message", param="messages")
    return conv, images


def build_prompt(chat: Chat, template: Conversation, messages: list[Message], policy: ImagePolicy, *,
                 max_new_tokens: int, max_length: int, max_images: int = 8) -> Prompt:
    conv, pil_images = build_conversation(chat, template, messages, policy, max_images)
    conv.append_message(conv.roles[1], None)
    try:
        view, kept, _ = fit_turns(conv, pil_images, chat.context_length, max_length - max_new_tokens)
    except ContextTooLongError as exc:
        raise APIError(400, f"{exc} (max_length is {max_length} here)", param="messages",
                       code="context_length_exceeded") from None
    text = view.get_prompt()
    pixels = torch.stack([chat.vis_processor(img) for img in kept]) if kept else None
    return Prompt(text, pixels, Chat.stop_strings(conv), chat.context_length(text, len(kept)))
