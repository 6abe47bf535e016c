"""MiniGPT-4 in the browser (Gradio), with the original demo's layout and streamed answers.

    python demo.py --cfg-path eval_configs/minigpt4_eval.yaml            # http://127.0.0.1:7860
    python demo.py --cfg-path eval_configs/tiny_eval.yaml --device cpu   # the offline tiny world

Each browser session has its own conversation and images (``gr.State``); one model serves everyone
through Gradio's queue, one generation at a time, so conversations never mix. Several images may be
added to one conversation. The server listens on 127.0.0.1 unless ``--host`` says otherwise;
``--share`` (a public Gradio link) is opt-in.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
from PIL import Image  # noqa: E402

from minigpt4 import inference  # noqa: E402
from minigpt4.conversation.conversation import Chat, Conversation, load_image  # noqa: E402
from minigpt4.conversation.history import ContextTooLongError  # noqa: E402

log = logging.getLogger("minigpt4.demo")

TITLE = "<h1 align='center'>MiniGPT-4</h1>"
DESCRIPTION = ("<h3 align='center'>Upload an image, press <b>Upload &amp; Start Chat</b>, then ask about it. "
               "More images can be added to the same conversation.</h3>")
IDLE_PLACEHOLDER = "Please upload your image first"
READY_PLACEHOLDER = "Type and press Enter"


@dataclasses.dataclass
class Session:
    """One browser session's conversation: the template copy, image embeddings, and what is shown."""
    conv: Conversation
    images: list = dataclasses.field(default_factory=list)
    shown: list = dataclasses.field(default_factory=list)  # chatbot messages (role/content dicts)
    pending: bool = False  # a question waits for its answer
    before_question: list = dataclasses.field(default_factory=list)  # conv.messages before the question


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="MiniGPT-4 Gradio demo")
    inference.add_model_args(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 = every interface)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--template", default="auto", choices=inference.TEMPLATES)
    parser.add_argument("--max-new-tokens", type=int, default=300)
    parser.add_argument("--max-length", type=int, default=2000, help="context + answer budget in tokens")
    parser.add_argument("--max-image-pixels", type=int, default=40_000_000, help="larger images are refused")
    parser.add_argument("--max-file-size", default="25mb", help="largest upload Gradio accepts")
    parser.add_argument("--seed", type=int, default=None, help="seed every answer (reproducible sampling)")
    parser.add_argument("--max-queue", type=int, default=64, help="requests waiting at most")
    return parser.parse_args(argv)


def open_checked(path, max_pixels: int) -> Image.Image:
    """The uploaded file as an RGB image, or ``ValueError`` with a message for the user."""
    if path is None:
        raise ValueError("Please choose an image first.")
    try:
        with Image.open(path) as probe:
            width, height = probe.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"This file is not an image I can read ({type(exc).__name__}).") from exc
    if width * height > max_pixels:
        raise ValueError(f"This image is too large ({width}x{height} pixels; at most {max_pixels:,} pixels).")
    try:
        return load_image(path)
    except ValueError as exc:
        raise ValueError("This file is not an image I can read (it may be corrupt).") from exc


def tolerant_preprocess(component: gr.Image):
    """Let unreadable uploads through as their path, so the handler can explain instead of Gradio failing."""
    original = component.preprocess

    def preprocess(payload):
        try:
            return original(payload)
        except Exception:  # noqa: BLE001 - any decoding failure is reported by open_checked
            return getattr(payload, "path", None)

    component.preprocess = preprocess
    return component


class DemoApp:
    def __init__(self, chat: Chat, template: Conversation, *, max_new_tokens=300, max_length=2000,
                 max_image_pixels=40_000_000, seed=None):
        self.chat, self.template = chat, template
        self.max_new_tokens, self.max_length = max_new_tokens, max_length
        self.max_image_pixels, self.seed = max_image_pixels, seed

    # ---------------------------------------------------------------- event handlers (one session each)
    def upload(self, path, session: Session | None):
        try:
            image = open_checked(path, self.max_image_pixels)
        except ValueError as exc:
            gr.Warning(str(exc))
            return session, gr.update(), (session.shown if session else [])
        session = session or Session(self.template.copy())
        self.chat.upload_img(image, session.conv, session.images)
        n = len(session.images)
        session.shown = session.shown + [{"role": "user", "content": f"[image {n} uploaded]"}]
        gr.Info("Image received. Ask away!" if n == 1 else f"Image {n} added to the conversation.")
        return (session, gr.update(interactive=True, placeholder=READY_PLACEHOLDER), session.shown)

    def ask(self, text: str, session: Session | None):
        text = (text or "").strip()
        if session is None or not session.images:
            gr.Warning("Please upload an image first.")
            return text, session, (session.shown if session else [])
        if not text:
            gr.Warning("Input should not be empty!")
            return "", session, session.shown
        session.before_question = [list(m) for m in session.conv.messages]
        self.chat.ask(text, session.conv)
        session.pending = True
        session.shown = session.shown + [{"role": "user", "content": text}]
        return "", session, session.shown

    def answer(self, session: Session | None, num_beams, temperature):
        if session is None or not session.pending:
            yield session, (session.shown if session else [])
            return
        session.pending = False
        shown = session.shown + [{"role": "assistant", "content": ""}]
        text = ""
        try:
            for piece in self.chat.stream_answer(session.conv, session.images, num_beams=int(num_beams),
                                                 temperature=float(temperature), do_sample=True,
                                                 max_new_tokens=self.max_new_tokens, max_length=self.max_length,
                                                 seed=self.seed):
                text += piece
                shown[-1] = {"role": "assistant", "content": text}
                yield session, shown
        except ContextTooLongError as exc:
            session.conv.messages = session.before_question  # take the question back
            gr.Warning(str(exc))
            text = "[The conversation is too long for this question; press Restart.]"
        except Exception as exc:  # noqa: BLE001 - the session must survive a failed generation
            log.exception("generation failed")
            session.conv.messages = session.before_question
            gr.Warning(f"Generation failed: {type(exc).__name__}: {exc}")
            text = "[Generation failed; please try again.]"
        shown[-1] = {"role": "assistant", "content": text or "[empty answer]"}
        session.shown = shown
        yield session, shown

    @staticmethod
    def restart():
        return (None, [], gr.update(value=None),
                gr.update(value="", interactive=False, placeholder=IDLE_PLACEHOLDER))

    # ---------------------------------------------------------------- layout
    def build(self) -> gr.Blocks:
        with gr.Blocks(title="MiniGPT-4") as demo:
            gr.Markdown(TITLE)
            gr.Markdown(DESCRIPTION)
            session = gr.State(None)
            with gr.Row():
                with gr.Column(scale=1):
                    image = tolerant_preprocess(gr.Image(type="filepath", image_mode=None, sources=["upload"],
                                                         label="Image", elem_id="image"))
                    upload = gr.Button("Upload & Start Chat", variant="primary", elem_id="upload")
                    restart = gr.Button("Restart", elem_id="restart")
                    num_beams = gr.Slider(1, 10, value=1, step=1, interactive=True, label="beam search numbers")
                    temperature = gr.Slider(0.1, 2.0, value=1.0, step=0.1, interactive=True, label="Temperature")
                with gr.Column(scale=2):
                    chatbot = gr.Chatbot(label="MiniGPT-4", elem_id="chatbot", latex_delimiters=[])
                    text = gr.Textbox(label="User", placeholder=IDLE_PLACEHOLDER, interactive=False, elem_id="user")
            model_events = dict(concurrency_id="model", concurrency_limit=1)
            upload.click(self.upload, [image, session], [session, text, chatbot], **model_events)
            text.submit(self.ask, [text, session], [text, session, chatbot]).then(
                self.answer, [session, num_beams, temperature], [session, chatbot], **model_events)
            restart.click(self.restart, None, [session, chatbot, image, text], queue=False)
        return demo


def theme():
    """The default look with local fonts only (nothing is fetched from the internet)."""
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "Consolas", "monospace"])


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    with inference.cli_errors("demo.py"):
        cfg, model, vis_processor, device = inference.load_model(args)
        template = inference.conversation_from_config(cfg.model, args.template)
    app = DemoApp(Chat(model, vis_processor, device=device), template, max_new_tokens=args.max_new_tokens,
                  max_length=args.max_length, max_image_pixels=args.max_image_pixels, seed=args.seed)
    demo = app.build()
    demo.queue(max_size=args.max_queue)
    log.info("serving on http://%s:%d (share=%s)", args.host, args.port, args.share)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, max_file_size=args.max_file_size,
                theme=theme(), ssr_mode=False, show_error=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
