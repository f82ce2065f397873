"""A reasoning model's thinking, apart from its answer (`kvserve serve --reasoning-parser`, vLLM's
flag): the chat reply's `reasoning` (vLLM's field; also sent as `reasoning_content`, the name
DeepSeek's API and many clients read) holds what the model wrote between <think> and </think>,
and `content` the rest.

    qwen3        thinking only where the reply opens with <think> (Qwen3 with enable_thinking; with
                 it off, the template closes an empty block in the prompt and the reply is answer)
    deepseek_r1  the reply is thinking from its start (the template opened <think> in the prompt; a
                 <think> the model writes anyway is dropped) up to </think>, all of it without one

Structured outputs (and forced tool calls) hold what follows the thinking: the grammar starts after
the model's </think> token (kvserve.grammar), unless the prompt holds it already (Qwen3 with
enable_thinking off), as vLLM's do. With a tokenizer that has no such token a grammar holds the
whole reply, which then has no thinking. Streaming, text goes out as it comes, but for a tail that
could be the start of a tag.
"""

from __future__ import annotations

from kvserve.server.tools import Reply

REASONING_PARSERS = ("qwen3", "deepseek_r1")
START, END = "<think>", "</think>"


def split_reasoning(parser: str, text: str) -> tuple[str | None, str]:
    """(reasoning, content) of a whole reply; reasoning None where the reply has no thinking."""
    opened = text.startswith(START)
    if parser == "qwen3" and not opened:
        return None, text
    body = text[len(START):] if opened else text
    end = body.find(END)
    if end < 0:
        return body, ""
    return body[:end], body[end + len(END):]


def _partial_tag(text: str, tag: str) -> int:
    """How many characters at the end of `text` could begin `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


class ReasoningReply(Reply):
    """A choice's reply split into thinking and answer; the answer goes on to `inner` (plain text,
    or tool calls the model writes)."""

    holds_text = True

    def __init__(self, parser: str, inner: Reply):
        self._parser = parser
        self._inner = inner
        self._text = ""
        self._sent = 0
        self._state = "start"  # start (not yet known whether it thinks), thinking, answer

    def message(self, text: str, finish_reason: str | None) -> tuple[dict, str | None]:
        reasoning, content = split_reasoning(self._parser, text)
        message, finish_reason = self._inner.message(content, finish_reason)
        if reasoning is None:
            return message, finish_reason
        if message.get("content") == "":
            message["content"] = None
        return {"reasoning": reasoning, "reasoning_content": reasoning, **message}, finish_reason

    def _thinking(self, text: str) -> list[dict]:
        return [{"reasoning": text, "reasoning_content": text}] if text else []

    def feed(self, piece: str) -> list[dict]:
        self._text += piece
        deltas = []
        if self._state == "start":
            if len(self._text) < len(START) and START.startswith(self._text):
                return deltas  # may still open the block
            opened = self._text.startswith(START)
            self._sent = len(START) if opened else 0
            self._state = "thinking" if opened or self._parser == "deepseek_r1" else "answer"
        if self._state == "thinking":
            end = self._text.find(END, self._sent)
            if end < 0:
                upto = len(self._text) - _partial_tag(self._text, END)
                deltas += self._thinking(self._text[self._sent:upto])
                self._sent = upto
                return deltas
            deltas += self._thinking(self._text[self._sent:end])
            self._sent, self._state = end + len(END), "answer"
        answer, self._sent = self._text[self._sent:], len(self._text)
        return deltas + self._inner.feed(answer)

    def finish(self, finish_reason: str | None) -> tuple[list[dict], str | None]:
        rest, self._sent = self._text[self._sent:], len(self._text)
        if self._state == "start":  # a reply shorter than the tag
            self._state = "thinking" if self._parser == "deepseek_r1" else "answer"
        deltas = self._thinking(rest) if self._state == "thinking" else self._inner.feed(rest)
        more, finish_reason = self._inner.finish(finish_reason)
        return deltas + more, finish_reason
