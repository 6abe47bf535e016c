"""The HTTP API (FastAPI): ``POST /v1/chat/completions`` (plain or server-sent events), ``GET /v1/models``,
``GET /health``. Requests are validated and their images decoded in worker threads; generation runs in
the shared :class:`~minigpt4.generation.Engine`, which batches concurrent requests.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from minigpt4.conversation.conversation import Chat, Conversation
from minigpt4.generation import Engine, Failed, Finished, Piece, QueueFull
from minigpt4.generation import Request as GenRequest
from minigpt4.serve.errors import APIError, error_body
from minigpt4.serve.images import ImagePolicy
from minigpt4.serve.prompts import build_prompt
from minigpt4.serve.schema import ChatCompletionRequest, parse_request, sampling_params

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ServeSettings:
    model_name: str = "minigpt4"
    max_length: int = 2000  # context + answer positions, as Chat's max_length
    default_max_tokens: int = 300  # max_tokens when unset (at most half of max_length)
    max_request_bytes: int = 20 * 1024 * 1024
    max_images: int = 8
    images: ImagePolicy = dataclasses.field(default_factory=ImagePolicy)
    api_key: str | None = None


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise APIError(413, f"the request is {int(length):,} bytes; at most {limit:,} are accepted",
                       code="request_too_large")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise APIError(413, f"the request is over {limit:,} bytes", code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _sse(payload) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


class _Job:
    """One generation request whose events arrive on this event loop."""

    def __init__(self, prompt, params):
        loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.request = GenRequest(prompt.text, prompt.images, params,
                                  sink=lambda ev: loop.call_soon_threadsafe(self.events.put_nowait, ev))


def create_app(chat: Chat, template: Conversation, engine: Engine, settings: ServeSettings) -> FastAPI:
    app = FastAPI(title="MiniGPT-4", docs_url=None, redoc_url=None, openapi_url=None)
    template_stops = Chat.stop_strings(template)

    @app.exception_handler(APIError)
    async def api_error(_request, exc: APIError):
        headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):
        err = APIError(exc.status_code, str(exc.detail))
        return JSONResponse(err.body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(_request, exc: Exception):
        log.error("internal error", exc_info=exc)
        return JSONResponse(error_body(f"internal error ({type(exc).__name__})", "server_error"), status_code=500)

    def authorize(request: Request) -> None:
        if not settings.api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise APIError(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                           code="invalid_api_key")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_name, "running": engine.running, "waiting": engine.waiting}

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": 0,
                                            "owned_by": "minigpt4"}]}

    async def prepare(request: Request) -> tuple[ChatCompletionRequest, _Job]:
        """Read, validate and submit a request (its images decoded in a worker thread)."""
        raw = await _read_body(request, settings.max_request_bytes)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from None
        except RecursionError:
            raise APIError(400, "the request body is nested too deeply to be read as JSON",
                           code="invalid_json") from None
        req = parse_request(body)
        default_max = max(1, min(settings.default_max_tokens, settings.max_length // 2))
        params = sampling_params(req, default_max, template_stops)
        if params.max_new_tokens >= settings.max_length:
            raise APIError(400, f"max_tokens={params.max_new_tokens} leaves no room for the prompt in this "
                           f"server's {settings.max_length} positions", param="max_tokens",
                           code="context_length_exceeded")
        prompt = await run_in_threadpool(build_prompt, chat, template, req.messages, settings.images,
                                         max_new_tokens=params.max_new_tokens, max_length=settings.max_length,
                                         max_images=settings.max_images)
        job = _Job(prompt, params)
        try:
            engine.submit(job.request)
        except QueueFull as exc:
            raise APIError(503, f"the server is busy: {exc}; retry later", code="server_overloaded") from None
        return req, job

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        if engine.waiting >= engine.max_queue:  # shed load before reading and decoding anything
            raise APIError(503, f"the server is busy: {engine.waiting} requests are waiting; retry later",
                           code="server_overloaded")
        with engine.incoming():  # the batch window waits for requests still being prepared
            req, job = await prepare(request)
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()),
                "model": req.model or settings.model_name}
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(_stream(job, meta, usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            while True:
                event = await job.events.get()
                if isinstance(event, Finished):
                    return _completion(meta, event)
                if isinstance(event, Failed):
                    raise APIError(500, f"generation failed ({type(event.error).__name__})")
        finally:
            job.request.cancel()  # a no-op once finished; frees the row when the client went away

    return app


def _usage(event: Finished) -> dict:
    return {"prompt_tokens": event.prompt_tokens, "completion_tokens": event.completion_tokens,
            "total_tokens": event.prompt_tokens + event.completion_tokens}


def _completion(meta: dict, event: Finished) -> dict:
    return {**meta, "object": "chat.completion", "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": event.text},
                         "logprobs": None, "finish_reason": event.finish_reason}],
            "usage": _usage(event)}


def _chunk(meta: dict, delta: dict, finish_reason=None, usage: bool = False) -> dict:
    out = {**meta, "object": "chat.completion.chunk", "system_fingerprint": None,
           "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
    if usage:
        out["usage"] = None
    return out


async def _stream(job: _Job, meta: dict, include_usage: bool):
    try:
        yield _sse(_chunk(meta, {"role": "assistant", "content": ""}, usage=include_usage))
        pending = None
        while True:
            event, pending = pending or await job.events.get(), None
            if isinstance(event, Piece):
                text = [event.text]
                while not job.events.empty():  # pieces that queued up meanwhile go out as one chunk
                    event = job.events.get_nowait()
                    if not isinstance(event, Piece):
                        pending = event
                        break
                    text.append(event.text)
                yield _sse(_chunk(meta, {"content": "".join(text)}, usage=include_usage))
            elif isinstance(event, Finished):
                if event.rest:
                    yield _sse(_chunk(meta, {"content": event.rest}, usage=include_usage))
                yield _sse(_chunk(meta, {}, event.finish_reason, usage=include_usage))
                if include_usage:
                    yield _sse({**meta, "object": "chat.completion.chunk", "system_fingerprint": None,
                                "choices": [], "usage": _usage(event)})
                break
            elif isinstance(event, Failed):
                yield _sse(error_body(f"generation failed ({type(event.error).__name__})", "server_error"))
                break
        yield "data: [DONE]\n\n"
    finally:
        job.request.cancel()
