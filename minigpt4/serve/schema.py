"""The ``POST /v1/chat/completions`` request: its fields (strictly typed, unknown fields refused) and
the generation settings they mean.

Supported: ``model``, ``messages`` (``system``/``developer``, ``user``, ``assistant``; content as a string
or a list of ``text`` and ``image_url`` parts), ``max_tokens`` (or ``max_completion_tokens``),
``temperature`` (0 = greedy), ``top_p``, ``seed``, ``stop``, ``n`` (1 only), ``stream``,
``stream_options.include_usage`` and ``user``. Other OpenAI fields are refused with a 400 naming them.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from minigpt4.conversation.settings import SEED_MAX, SEED_MIN
from minigpt4.generation import SamplingParams
from minigpt4.serve.errors import APIError, bad_request

STRICT = ConfigDict(extra="forbid", strict=True)


class ImageURL(BaseModel):
    model_config = STRICT
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(BaseModel):
    model_config = STRICT
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    model_config = STRICT
    type: Literal["image_url"]
    image_url: ImageURL


Part = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]


class Message(BaseModel):
    model_config = STRICT
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[Part]]
    name: str | None = None


class StreamOptions(BaseModel):
    model_config = STRICT
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = STRICT
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)  # what torch's generators accept
    stop: Union[str, list[str], None] = None
    n: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None


def _clean(loc: tuple) -> tuple:
    """The location without pydantic's union labels (``str``, ``list[...]``, a part's ``type`` tag)."""
    out: list = []
    for part in loc:
        if isinstance(part, str) and (part == "str" or part.startswith("list[")):
            continue
        if out and part == out[-1] and isinstance(part, str):
            continue
        out.append(part)
    return tuple(out)


def _param(loc: tuple) -> str | None:
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    return text or None


def parse_request(body: object) -> ChatCompletionRequest:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        errors = [(e, _clean(e["loc"])) for e in exc.errors(include_url=False)]
        err, loc = max(errors, key=lambda e: (e[0]["type"] == "extra_forbidden", len(e[1])))
        param = _param(loc)
        if err["type"] == "extra_forbidden":
            raise bad_request(f"unknown or unsupported field {param!r}", param=param, code="unknown_field") from None
        same_place = {e["type"] for e, l in errors if l == loc}
        msg = "has the wrong type (see the OpenAI chat completions format)" if len(same_place) > 1 else err["msg"]
        raise bad_request(f"{param}: {msg}" if param else msg, param=param, code="invalid_value") from None


def sampling_params(req: ChatCompletionRequest, default_max_tokens: int, template_stops: list[str],
                    max_stop: int = 4) -> SamplingParams:
    """The request's generation settings (OpenAI defaults: temperature 1, top_p 1)."""
    if (req.n or 1) != 1:
        raise bad_request("only n=1 is supported", param="n", code="unsupported_value")
    if req.max_tokens is not None and req.max_completion_tokens is not None \
            and req.max_tokens != req.max_completion_tokens:
        raise bad_request("max_tokens and max_completion_tokens disagree", param="max_tokens")
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > max_stop or any(not s for s in stops):
        raise bad_request(f"stop takes at most {max_stop} non-empty strings", param="stop")
    max_new = req.max_tokens or req.max_completion_tokens or default_max_tokens
    try:
        return SamplingParams(max_new_tokens=max_new, temperature=1.0 if req.temperature is None else req.temperature,
                              top_p=1.0 if req.top_p is None else req.top_p, seed=req.seed,
                              stop_strings=tuple(dict.fromkeys(template_stops + stops)))
    except ValueError as exc:
        raise APIError(400, str(exc)) from None
