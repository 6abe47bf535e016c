"""``python -m minigpt4.serve``: the OpenAI-compatible server (see :mod:`minigpt4.serve`)."""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path

from minigpt4 import inference
from minigpt4.errors import non_empty, user_errors

MB = 1024 * 1024


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m minigpt4.serve",
                                     description="OpenAI-compatible chat completions server for a MiniGPT-4 model")
    inference.add_model_args(parser)
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 = every interface)")
    add("--port", type=int, default=8000)
    add("--max-batch-size", type=int, default=8, help="rows generated together (1 = no batching)")
    add("--batch-window-ms", type=float, default=15.0,
        help="an idle server waits this long for more requests to start a batch with")
    add("--max-queue", type=int, default=64, help="requests waiting at most; more get 503")
    add("--template", default="auto", choices=inference.TEMPLATES,
        help="conversation template (auto: the config's prompt_template if set, else model_type's)")
    add("--model-name", default="minigpt4", help="the id /v1/models reports")
    add("--max-length", type=int, default=None,
        help="context + answer positions (default: 2000, or the LLM's max_position_embeddings if smaller)")
    add("--default-max-tokens", type=int, default=300, help="max_tokens when a request does not set it")
    add("--max-request-mb", type=float, default=20.0, help="largest request body")
    add("--max-image-mb", type=float, default=10.0, help="largest image file")
    add("--max-image-pixels", type=int, default=16_000_000, help="largest image (width x height)")
    add("--max-images", type=int, default=8, help="images per request")
    add("--allow-local-dir", type=non_empty, default=None, metavar="DIR",
        help="serve image_url file paths from inside DIR (symlinks resolved; nothing outside it)")
    add("--allow-remote-images", action="store_true", help="fetch http(s) image URLs (off by default)")
    add("--api-key-env", default=None, metavar="VAR",
        help="require 'Authorization: Bearer <key>' with the key read from this environment variable")
    add("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    add("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser.parse_args(argv)


def check_args(args) -> str | None:
    """Usage errors before the model loads; returns the API key (None = open)."""
    inference.check_port(args.port)
    for name in ("max_batch_size", "max_queue", "default_max_tokens", "max_image_pixels", "max_images", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:  # threads: None = torch's default
            raise inference.UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    cpus = os.cpu_count() or 1
    if args.threads is not None and args.threads > cpus:
        raise inference.UsageError(f"--threads must be at most this machine's {cpus} CPUs, got {args.threads}")
    if args.max_length is not None and args.max_length < 2:
        raise inference.UsageError(f"--max-length must be >= 2 (it holds the prompt and the answer), "
                                   f"got {args.max_length}")
    for name in ("max_request_mb", "max_image_mb"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value * MB >= 1):
            raise inference.UsageError(f"--{name.replace('_', '-')} must be a number > 0, got {value}")
    if not (math.isfinite(args.batch_window_ms) and args.batch_window_ms >= 0):
        raise inference.UsageError(f"--batch-window-ms must be a number >= 0, got {args.batch_window_ms}")
    if args.allow_local_dir is not None and not Path(args.allow_local_dir).is_dir():
        raise inference.UsageError(f"--allow-local-dir {args.allow_local_dir}: no such directory")
    if args.api_key_env is None:
        return None
    key = os.environ.get(args.api_key_env, "")
    if not key:
        raise inference.UsageError(f"--api-key-env {args.api_key_env}: that environment variable is not set "
                                   "or empty; export the key first")
    return key


def build(args, api_key):
    """(app, engine) for parsed arguments: loads the model and starts the engine thread."""
    import torch

    from minigpt4.conversation.conversation import Chat
    from minigpt4.generation import Engine
    from minigpt4.serve.app import ServeSettings, create_app
    from minigpt4.serve.images import ImagePolicy

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg, model, vis_processor, device = inference.load_model(args)
    template = inference.conversation_from_config(cfg.model, args.template)
    limit = getattr(model.llama_model.config, "max_position_embeddings", None) or 2000
    max_length = args.max_length or min(2000, limit)
    if max_length > limit:
        raise inference.UsageError(f"--max-length {max_length}: the LLM has only {limit} positions")
    chat = Chat(model, vis_processor, device=device)
    shortest = template.copy()  # a one-word question without an image, as prompts.build_prompt builds it
    chat.ask("hi", shortest)
    shortest.append_message(shortest.roles[1], None)
    needed = chat.context_length(shortest.get_prompt(), 0) + 1
    if max_length < needed:
        raise inference.UsageError(f"--max-length {max_length}: the shortest request (one word, no image) "
                                   f"needs {needed} positions with this template")
    settings = ServeSettings(model_name=args.model_name, max_length=max_length,
                             default_max_tokens=args.default_max_tokens,
                             max_request_bytes=int(args.max_request_mb * MB), max_images=args.max_images,
                             images=ImagePolicy(max_image_bytes=int(args.max_image_mb * MB),
                                                max_image_pixels=args.max_image_pixels,
                                                allowed_dir=Path(args.allow_local_dir) if args.allow_local_dir
                                                else None, allow_remote=args.allow_remote_images),
                             api_key=api_key)
    engine = Engine(model, max_batch_size=args.max_batch_size, batch_window=args.batch_window_ms / 1000,
                    max_queue=args.max_queue).start()
    return create_app(chat, template, engine, settings), engine


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    with user_errors("minigpt4.serve"):
        api_key = check_args(args)
        app, engine = build(args, api_key)
    import uvicorn

    if args.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        logging.getLogger("minigpt4.serve").warning(
            "listening on %s without an API key (--api-key-env): anyone who can reach it can use it", args.host)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        engine.stop()
    return 0
