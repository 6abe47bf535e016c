"""A conversation about images in the terminal, with streamed answers.

    python -m minigpt4.chat --cfg-path eval_configs/tiny_eval.yaml --image photo.jpg

Type a question and press Enter. Commands: ``/image PATH`` adds another image to the conversation,
``/reset`` starts over (without images), ``/quit`` (or Ctrl-D) leaves. Ctrl-C while an answer
streams stops that answer (the question is taken back); at the prompt it clears the line, as in a shell. Model, template and
big-model options are described in :mod:`minigpt4.inference`.
"""
from __future__ import annotations

import argparse
import logging
import sys

from minigpt4 import inference
from minigpt4.errors import UserError, non_empty, user_errors

HELP = "commands: /image PATH (add an image), /reset (start over), /quit (or Ctrl-D)"
COMMANDS = """\
in the conversation:
  QUESTION       ask about the image(s); the answer streams in (Ctrl-C stops it)
  /image PATH    add another image to the conversation
  /reset         start over, without images
  /quit          leave (so does Ctrl-D; Ctrl-C at the prompt only clears the line)

example (the tiny world, built with: python -m minigpt4.tiny_world --out tiny_world):
  python -m minigpt4.chat --cfg-path eval_configs/tiny_eval.yaml --image tiny_world/data/eval/test/0.jpg
"""
FLAGS = {"num_beams": "--num-beams", "max_new_tokens": "--max-new-tokens", "top_p": "--top-p",
         "temperature": "--temperature", "max_length": "--max-length", "seed": "--seed"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m minigpt4.chat", description=__doc__.split("\n\n")[0],
                                     epilog=COMMANDS, formatter_class=argparse.RawDescriptionHelpFormatter)
    inference.add_model_args(parser)
    parser.add_argument("--image", type=non_empty, required=True, help="the first image of the conversation")
    inference.add_conversation_args(parser)
    parser.add_argument("--num-beams", type=int, default=1,
                        help="beam search width; > 1 answers in one piece instead of streaming (default: 1)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature, > 0 (default: 1.0)")
    parser.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling, in (0, 1] (default: 0.9)")
    parser.add_argument("--greedy", action="store_true", help="no sampling: deterministic answers (default: off)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed for sampling: reproducible answers, -2**63..2**64-1 (default: none)")
    return parser.parse_args(argv)


class Session:
    def __init__(self, chat, template, gen_kwargs: dict, out=None):
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
        except UserError as exc:
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
        from minigpt4.conversation.history import ContextTooLongError

        before = [list(m) for m in self.conv.messages]
        self.chat.ask(text, self.conv)
        print("MiniGPT-4: ", end="", file=self.out, flush=True)
        stream = self.chat.stream_answer(self.conv, self.images, **self.gen_kwargs)
        try:
            for piece in stream:
                print(piece, end="", file=self.out, flush=True)
        except KeyboardInterrupt:
            stream.close()  # stops generate at its next token
            self.conv.messages = before  # the stopped question and its partial answer are forgotten
            self.say("\n[answer stopped; ask again or /quit]")
            return
        except ContextTooLongError as exc:
            self.conv.messages = before  # take back the question that did not fit
            self.say(f"\n[{exc}]")
            return
        finally:
            stream.close()
        self.say("")


def generation_kwargs(args) -> dict:
    """The answer settings from the flags, checked (a bad value is a usage error naming the flag)."""
    from minigpt4.conversation.settings import check_generation_settings

    gen = dict(max_new_tokens=args.max_new_tokens, max_length=args.max_length, num_beams=args.num_beams,
               temperature=args.temperature, top_p=args.top_p)
    check_generation_settings(**gen, seed=args.seed, names=FLAGS)
    return dict(gen, do_sample=not args.greedy, seed=args.seed)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        with user_errors("minigpt4.chat"):
            gen_kwargs = generation_kwargs(args)
            cfg, model, vis_processor, device = inference.load_model(args)
            template = inference.conversation_from_config(cfg.model, args.template)
    except KeyboardInterrupt:
        print("minigpt4.chat: interrupted while loading", file=sys.stderr)
        return 130
    from minigpt4.conversation.conversation import Chat

    session = Session(Chat(model, vis_processor, device=device), template, gen_kwargs)
    if not session.add_image(args.image):
        return 2
    session.say(HELP)
    while True:
        try:
            line = input("You: ")
        except EOFError:
            session.say("")
            return 0
        except KeyboardInterrupt:
            session.say("\n[Ctrl-C: type /quit or press Ctrl-D to leave]")
            continue
        if not session.handle(line):
            return 0


if __name__ == "__main__":
    raise SystemExit(main())
