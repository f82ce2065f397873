"""`kvserve generate` and `kvserve chat`: an Engine in the terminal, its text written as it grows.

    kvserve generate [MODEL] --prompt "Once upon a time"     one completion, then exit
    kvserve chat [MODEL]                                     a conversation: each reply sees the history

Generated text goes to stdout and everything else (loading, the chat banner, the `> ` prompt,
errors) to stderr, so that `kvserve generate ... > out.txt` and `kvserve chat < in > out` keep only
the text. Ctrl-C stops the reply being written.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import sys
from collections.abc import Callable

from kvserve.engine import Engine
from kvserve.engine_args import add_chat_template_argument, add_engine_arguments, add_model_argument, engine_from_args
from kvserve.sampling_params import RequestOutputKind, SamplingParams

Write = Callable[[str], None]
_request_ids = itertools.count()


def _write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _read_after_prompt(prompt: str) -> str:
    """input(), with the prompt on stderr (input() writes it to stdout)."""
    sys.stderr.write(prompt)
    sys.stderr.flush()
    return input()


def stream_reply(engine: Engine, prompt: dict, params: SamplingParams, write: Write) -> str:
    """Run one request alone on `engine`, writing its text as each step adds to it; returns the
    whole text. An exception (Ctrl-C) aborts the request before it propagates."""
    request_id = f"terminal-{next(_request_ids)}"
    engine.add_request(request_id, prompt, dataclasses.replace(params, n=1, output_kind=RequestOutputKind.DELTA))
    parts = []
    try:
        while engine.has_unfinished_requests():
            for output in engine.step():
                delta = output.outputs[0].text
                if delta:
                    write(delta)
                    parts.append(delta)
    finally:
        engine.abort(request_id)
    return "".join(parts)


class ChatSession:
    """A conversation with the model: each reply is generated from the whole history."""

    def __init__(self, engine: Engine, params: SamplingParams, system: str | None = None):
        if engine.tokenizer is None or engine.tokenizer.chat_template is None:
            raise ValueError("kvserve chat needs a chat template: the model has none (pass --chat-template)")
        self.engine = engine
        self.params = params
        self.system = system
        self.messages: list[dict] = []
        self.clear()

    def clear(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def reply(self, user_text: str, write: Write) -> str:
        """Add the user's message, stream the reply, keep both; on an error neither is kept."""
        self.messages.append({"role": "user", "content": user_text})
        try:
            text = self.engine.tokenizer.apply_chat_template(self.messages, add_generation_prompt=True)
            ids = self.engine.tokenizer.encode(text, add_special_tokens=False)
            reply = stream_reply(self.engine, {"prompt_token_ids": ids, "prompt": text}, self.params, write)
        except BaseException:
            self.messages.pop()
            raise
        self.messages.append({"role": "assistant", "content": reply})
        return reply


def add_sampling_arguments(parser: argparse.ArgumentParser, max_tokens: int) -> None:
    parser.add_argument("--max-tokens", type=int, default=max_tokens, help=f"default: {max_tokens}")
    parser.add_argument("--temperature", type=float, help="0 is greedy (default: the model's, else 1)")
    parser.add_argument("--top-p", type=float, help="default: the model's, else 1")
    parser.add_argument("--top-k", type=int, help="default: the model's, else off")


def sampling_params_from_args(engine: Engine, args: argparse.Namespace) -> SamplingParams:
    given = {"max_tokens": args.max_tokens, "temperature": args.temperature, "top_p": args.top_p,
             "top_k": args.top_k}
    return SamplingParams(**{**engine.model_config.default_sampling,
                             **{name: value for name, value in given.items() if value is not None}})


def _load(args: argparse.Namespace, command: str) -> tuple[Engine, SamplingParams]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.skip_tokenizer_init:
        raise SystemExit(f"kvserve {command}: --skip-tokenizer-init loads no tokenizer, but {command} takes text: "
                         "leave the flag out")
    try:
        engine = engine_from_args(args)
        return engine, sampling_params_from_args(engine, args)
    except (ValueError, RuntimeError) as e:  # bad flags, a model that cannot be read or fetched
        raise SystemExit(f"kvserve {command}: {e}") from None


def run_generate(args: argparse.Namespace) -> int:
    engine, params = _load(args, "generate")
    try:
        stream_reply(engine, {"prompt": args.prompt}, params, _write_stdout)
    except ValueError as e:
        raise SystemExit(f"kvserve generate: {e}") from None
    except KeyboardInterrupt:
        return 130
    finally:
        _write_stdout("\n")
    return 0


def run_chat(args: argparse.Namespace, read: Callable[[str], str] = _read_after_prompt,
             write: Write = _write_stdout) -> int:
    engine, params = _load(args, "chat")
    try:
        session = ChatSession(engine, params, args.system)
    except ValueError as e:
        raise SystemExit(f"kvserve chat: {e}") from None
    print("Type a message and press Enter. /clear starts over; /exit or Ctrl-D quits.", file=sys.stderr)
    while True:
        try:
            line = read("> ").strip()
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)  # ends the prompt's line
            return 0
        if line == "/exit":
            return 0
        if line == "/clear":
            session.clear()
        elif line:
            try:
                session.reply(line, write)
            except KeyboardInterrupt:
                write(" [stopped]")
            except ValueError as e:  # e.g. the conversation outgrew the context: /clear helps
                print(f"error: {e}", file=sys.stderr)
                continue
            write("\n")


def add_terminal_parsers(commands: argparse._SubParsersAction) -> None:
    generate = commands.add_parser("generate", help="complete one prompt, streaming the text to the terminal")
    add_model_argument(generate)
    add_engine_arguments(generate)
    generate.add_argument("--prompt", required=True, help="the text to continue")
    add_sampling_arguments(generate, max_tokens=128)
    generate.set_defaults(func=run_generate)

    chat = commands.add_parser("chat", help="chat with a model in the terminal (with history, streaming)")
    add_model_argument(chat)
    add_engine_arguments(chat)
    chat.add_argument("--system", help="a system message that opens the conversation")
    add_chat_template_argument(chat)
    add_sampling_arguments(chat, max_tokens=512)
    chat.set_defaults(func=run_chat)
