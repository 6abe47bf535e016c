"""The Gradio app behind ``demo.py``: the original demo's layout, streamed answers, one conversation per
browser session (``gr.State``), one model serving everyone through Gradio's queue.

Unreadable uploads reach the handler (through :class:`TolerantImage`) and get a readable notice instead of
Gradio's error badge. Restart cancels a running answer: the old session is closed, so nothing its stream
still yields can bring the old conversation back.
"""
from __future__ import annotations

import dataclasses
import logging

import gradio as gr
from PIL import Image

from minigpt4.conversation.conversation import Chat, Conversation, load_image
from minigpt4.conversation.history import ContextTooLongError
from minigpt4.images import ImageTooLarge

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
    closed: bool = False  # Restart was pressed: this conversation is over, its running answer stops


def live(session: Session | None) -> Session | None:
    """The session, unless Restart closed it (a stream that was still running may have put it back)."""
    return None if session is None or session.closed else session


def open_checked(path, max_pixels: int) -> Image.Image:
    """The uploaded file as an RGB image, or ``ValueError`` with a message for the user."""
    if path is None:
        raise ValueError("Please choose an image first.")
    try:
        return load_image(path, max_pixels=max_pixels)  # the size is checked from the header before decoding
    except ImageTooLarge as exc:
        if exc.size is None:
            raise ValueError(f"This image is too large to decode (at most {max_pixels:,} pixels).") from exc
        width, height = exc.size
        raise ValueError(f"This image is too large ({width}x{height} pixels; at most {max_pixels:,} pixels).") \
            from exc
    except ValueError as exc:
        cause = type(exc.__cause__).__name__ if exc.__cause__ is not None else "it may be corrupt"
        raise ValueError(f"This file is not an image I can read ({cause}).") from exc


class TolerantImage(gr.Image):
    """``gr.Image`` that lets an unreadable upload through as its path, so the handler can explain instead
    of Gradio failing. A subclass (not a patched instance): Gradio rebuilds a component per session from
    its class when an event updates it (Restart clears the image), and the rebuilt one must keep this."""

    is_template = True  # the browser renders it as a plain Image

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except Exception:  # noqa: BLE001 - any decoding failure is reported by open_checked
            return getattr(payload, "path", None)


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
            return session, gr.update(), (live(session).shown if live(session) else [])
        session = live(session) or Session(self.template.copy())
        self.chat.upload_img(image, session.conv, session.images)
        n = len(session.images)
        session.shown = session.shown + [{"role": "user", "content": f"[image {n} uploaded]"}]
        gr.Info("Image received. Ask away!" if n == 1 else f"Image {n} added to the conversation.")
        return (session, gr.update(interactive=True, placeholder=READY_PLACEHOLDER), session.shown)

    def ask(self, text: str, session: Session | None):
        text = (text or "").strip()
        session = live(session)
        if session is None or not session.images:  # e.g. Restart overtook this question
            gr.Warning("Please upload an image first.")
            return (gr.update(value=text, interactive=False, placeholder=IDLE_PLACEHOLDER), session,
                    (session.shown if session else []))
        if not text:
            gr.Warning("Input should not be empty!")
            return "", session, session.shown
        session.before_question = [list(m) for m in session.conv.messages]
        self.chat.ask(text, session.conv)
        session.pending = True
        session.shown = session.shown + [{"role": "user", "content": text}]
        return "", session, session.shown

    def answer(self, session: Session | None, num_beams, temperature):
        if live(session) is None or not session.pending:
            yield (session, session.shown) if live(session) else (gr.update(), gr.update())
            return
        session.pending = False
        shown = session.shown + [{"role": "assistant", "content": ""}]
        text = ""
        stream = self.chat.stream_answer(session.conv, session.images, num_beams=int(num_beams),
                                         temperature=float(temperature), do_sample=True,
                                         max_new_tokens=self.max_new_tokens, max_length=self.max_length,
                                         seed=self.seed)
        try:
            for piece in stream:
                if session.closed:  # Restart: stop generating and leave the new state alone
                    return
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
        finally:
            stream.close()  # stops generate at its next token when the answer was cut short
        if session.closed:
            return
        shown[-1] = {"role": "assistant", "content": text or "[empty answer]"}
        session.shown = shown
        yield session, shown

    @staticmethod
    def restart(session: Session | None = None):
        if session is not None:
            session.closed = True  # a running answer sees this and stops
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
                    image = TolerantImage(type="filepath", image_mode=None, sources=["upload"], label="Image",
                                          elem_id="image")
                    upload = gr.Button("Upload & Start Chat", variant="primary", elem_id="upload")
                    restart = gr.Button("Restart", elem_id="restart")
                    num_beams = gr.Slider(1, 10, value=1, step=1, interactive=True, label="beam search numbers")
                    temperature = gr.Slider(0.1, 2.0, value=1.0, step=0.1, interactive=True, label="Temperature")
                with gr.Column(scale=2):
                    chatbot = gr.Chatbot(label="MiniGPT-4", elem_id="chatbot", latex_delimiters=[])
                    text = gr.Textbox(label="User", placeholder=IDLE_PLACEHOLDER, interactive=False, elem_id="user")
            model_events = dict(concurrency_id="model", concurrency_limit=1)
            upload.click(self.upload, [image, session], [session, text, chatbot], **model_events)
            answering = text.submit(self.ask, [text, session], [text, session, chatbot]).then(
                self.answer, [session, num_beams, temperature], [session, chatbot], **model_events)
            restart.click(self.restart, [session], [session, chatbot, image, text], queue=False, cancels=[answering])
        return demo


def theme():
    """The default look with local fonts only (nothing is fetched from the internet)."""
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "Consolas", "monospace"])


