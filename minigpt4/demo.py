"""MiniGPT-4 in the browser (Gradio), with the original demo's layout and streamed answers.

    python demo.py --cfg-path eval_configs/tiny_eval.yaml             # the offline tiny world, on CPU
    python demo.py --cfg-path eval_configs/minigpt4_eval.yaml         # real weights, http://127.0.0.1:7860

Each browser session has its own conversation and images; one model serves everyone through Gradio's
queue, one generation at a time, so conversations never mix. Several images may be added to one
conversation; Restart ends it (and stops an answer that is still streaming). The server listens on
127.0.0.1 unless --host says otherwise; --share (a public Gradio link) is opt-in.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys

from minigpt4 import inference
from minigpt4.errors import user_errors

log = logging.getLogger("minigpt4.demo")
FILE_SIZE_UNITS = {"": 1, "b": 1, "kb": 1024, "mb": 1024 ** 2, "gb": 1024 ** 3, "tb": 1024 ** 4}  # as Gradio's


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python demo.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    inference.add_model_args(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; 0.0.0.0 = every interface (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default: 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (default: off)")
    inference.add_conversation_args(parser)
    parser.add_argument("--max-image-pixels", type=int, default=40_000_000,
                        help="larger images are refused with a notice (default: 40000000)")
    parser.add_argument("--max-file-size", default="25mb",
                        help="largest upload Gradio accepts: bytes, or a whole number with b, kb, mb, gb or tb "
                             "(default: 25mb)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed every answer: reproducible sampling, -2**63..2**64-1 (default: none)")
    parser.add_argument("--max-queue", type=int, default=64,
                        help="requests that may wait for the model at most (default: 64)")
    return parser.parse_args(argv)


def file_size(text: str) -> int:
    """``--max-file-size`` in bytes: a whole number > 0, optionally with Gradio's units (``25mb``, ``1 GB``)."""
    match = re.fullmatch(r"\s*(\d+)\s*([a-z]*)\s*", text.lower())
    if not match or match[2] not in FILE_SIZE_UNITS or int(match[1]) < 1:
        raise inference.UsageError(f"--max-file-size must be a whole number > 0 of bytes or with a unit "
                                   f"(b, kb, mb, gb, tb), e.g. 25mb; got {text!r}")
    return int(match[1]) * FILE_SIZE_UNITS[match[2]]


def check_args(args) -> int:
    """Usage errors before the model loads; returns the upload limit in bytes."""
    from minigpt4.conversation.settings import check_generation_settings

    check_generation_settings(max_new_tokens=args.max_new_tokens, max_length=args.max_length, seed=args.seed,
                              names={"max_new_tokens": "--max-new-tokens", "max_length": "--max-length",
                                     "seed": "--seed"})
    inference.check_port(args.port)
    for flag, value in (("--max-image-pixels", args.max_image_pixels), ("--max-queue", args.max_queue)):
        if value < 1:
            raise inference.UsageError(f"{flag} must be >= 1, got {value}")
    return file_size(args.max_file_size)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    with user_errors("demo.py"):
        max_file_size = check_args(args)
        cfg, model, vis_processor, device = inference.load_model(args)
        template = inference.conversation_from_config(cfg.model, args.template)
    from minigpt4.conversation.conversation import Chat
    from minigpt4.demo_app import DemoApp, theme

    app = DemoApp(Chat(model, vis_processor, device=device), template, max_new_tokens=args.max_new_tokens,
                  max_length=args.max_length, max_image_pixels=args.max_image_pixels, seed=args.seed)
    demo = app.build()
    demo.queue(max_size=args.max_queue)
    log.info("serving on http://%s:%d (share=%s)", args.host, args.port, args.share)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, max_file_size=max_file_size,
                theme=theme(), ssr_mode=False, show_error=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
