"""A conversation about images in the terminal, with streamed answers.

    python -m minigpt4.chat --cfg-path eval_configs/minigpt4_eval.yaml --image photo.jpg

Type a question and press Enter. Commands: ``/image PATH`` adds another image to the conversation,
``/reset`` starts over (without images), ``/quit`` (or end of input) leaves. Model, template and
big-model options are described in :mod:`minigpt4.inference`.
"""
from __future__ import annotations

import argparse
import logging
import sys

from minigpt4 import inference
from minigpt4.conversation.conversation import Chat
from minigpt4.conversation.history import ContextTooLongError

HELP = "commands: /image PATH (add an image), /reset (start over), /quit"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m minigpt4.chat", description=__doc__.split("\n\n")[0])
    inference.add_model_args(parser)
    parser.add_argument("--image", required=True, help="the first image of the conversation")
    parser.add_argument("--template", default="auto", choices=inference.TEMPLATES,
                        help="conversation template (auto: the config's prompt_template if set, else model_type's)")
    parser.add_argument("--max-new-tokens", type=int, default=300)
    parser.add_argument("--max-length", type=int, default=2000, help="context + answer budget in tokens")
    parser.add_argument("--num-beams", type=int, default=1, help="beam search (>1) answers in one piece")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--greedy", action="store_true", help="no sampling (deterministic answers)")
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling (reproducible answers)")
    return parser.parse_args(argv)


class Session:
    def __init__(self, chat: Chat, template, gen_kwargs: dict, out=None):
        self.chat, self.template, self.gen_kwargs = chat, template, gen_kwargs
        self.out = out or sys.stdout
        self.reset()

    def reset(self) -> None:
        self.conv, self.images = self.template.copy(), []

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def add_image(self, path: str) -> bool:
        try:
            self.chat.upload_img(path, self.conv, self.images)
        except (ValueError, TypeError) as exc:
            self.say(f"[could not add the image: {exc}]")
            return False
        self.say(f"[image {len(self.images)} added: {path}]")
        return True

    def handle(self, line: str) -> bool:
        """Process one input line; False means quit."""
        text = line.strip()
        if not text:
            return True
        if text in ("/quit", "/exit"):
            return False
        if text == "/reset":
            self.reset()
            self.say("[conversation cleared; add an image with /image PATH]")
        elif text.startswith("/image"):
            path = text[len("/image"):].strip()
            self.add_image(path) if path else self.say("[usage: /image PATH]")
        elif text.startswith("/"):
            self.say(f"[unknown command {text.split()[0]}; {HELP}]")
        elif not self.images:
            self.say("[no image in this conversation yet; add one with /image PATH]")
        else:
            self.answer(text)
        return True

    def answer(self, text: str) -> None:
        before = [list(m) for m in self.conv.messages]
        self.chat.ask(text, self.conv)
        print("MiniGPT-4: ", end="", file=self.out, flush=True)
        try:
            for piece in self.chat.stream_answer(self.conv, self.images, **self.gen_kwargs):
                print(piece, end="", file=self.out, flush=True)
        except ContextTooLongError as exc:
            self.conv.messages = before  # take back the question that did not fit
            self.say(f"\n[{exc}]")
            return
        self.say("")


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    with inference.cli_errors("minigpt4.chat"):
        cfg, model, vis_processor, device = inference.load_model(args)
        template = inference.conversation_from_config(cfg.model, args.template)
    gen_kwargs = dict(max_new_tokens=args.max_new_tokens, max_length=args.max_length, num_beams=args.num_beams,
                      temperature=args.temperature, top_p=args.top_p, do_sample=not args.greedy, seed=args.seed)
    session = Session(Chat(model, vis_processor, device=device), template, gen_kwargs)
    if not session.add_image(args.image):
        return 2
    session.say(HELP)
    while True:
        try:
            line = input("You: ")
        except (EOFError, KeyboardInterrupt):
            session.say("")
            return 0
        if not session.handle(line):
            return 0


if __name__ == "__main__":
    raise SystemExit(main())
