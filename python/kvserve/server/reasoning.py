"""A reasoning model's thinking, apart from its answer (`kvserve serve --reasoning-parser`, vLLM's
flag): the chat reply's `reasoning` (vLLM's field; also sent as `reasoning_content`, the name
DeepSeek's API and many clients read) holds what the model wrote between <think> and </think>,
and `content` the rest.

    qwen3        thinking where the reply opens with <think> (Qwen3 with enable_thinking), or where
                 the prompt ends with <think> (Qwen3-Thinking-2507's template opens it)
    deepseek_r1  the reply is thinking from its start (the template opened <think> in the prompt; a
                 <think> the model writes anyway is dropped)

Either way the thinking ends at </think> (all of the reply is thinking without one), and a reply
to a prompt that ends with </think> (Qwen3's template with enable_thinking off closes an empty
block) is all answer.

Structured outputs (and forced tool calls) hold what follows the thinking: the grammar starts after
the model's </think> token (kvserve.grammar), unless the prompt holds it already (Qwen3 with
enable_thinking off), as vLLM's do. With a tokenizer that has no such token a grammar holds the
whole reply, which then has no thinking. Streaming, text goes out as it comes, but for a tail that
could be the start of a tag.
"""

from __future__ import annotations

from kvserve.grammar import THINK_END as END
from kvserve.grammar import THINK_START as START
from kvserve.server.tool_parsers.tags import partial_tag
from kvserve.server.tools import Reply


def _starts(parser: str, prompt: str) -> tuple[str, bool]:
    """(state, thinks by default) where a reply to `prompt` starts: "answer" after a prompt that closed
    the thinking (Qwen3's template with enable_thinking off), else "start" (the reply's first
    characters tell whether it opens with <think>), thinking by default where the prompt opened it
    (DeepSeek-R1's, Qwen3-Thinking-2507's templates) or the parser is deepseek_r1."""
    tail = prompt.rstrip()
    if tail.endswith(END):
        return "answer", False
    return "start", parser == "deepseek_r1" or tail.endswith(START)


def split_reasoning(parser: str, text: str, prompt: str = "") -> tuple[str | None, str]:
    """(reasoning, content) of a whole reply to `prompt`; reasoning None where it has no thinking."""
    state, thinks = _starts(parser, prompt)
    opened = text.startswith(START)
    if state == "answer" or not (opened or thinks):
        return None, text
    body = text[len(START):] if opened else text
    end = body.find(END)
    if end < 0:
        return body, ""
    return body[:end], body[end + len(END):]


class ReasoningReply(Reply):
    """A choice's reply split into thinking and answer; the answer goes on to `inner` (plain text,
    or tool calls the model writes)."""

    holds_text = True

    def __init__(self, parser: str, inner: Reply, prompt: str = ""):
        """`prompt`: the text the reply follows, whose end may have opened or closed the thinking."""
        self._parser = parser
        self._inner = inner
        self._prompt = prompt
        self._text = ""
        self._sent = 0
        # start (not yet known whether it opens with <think>), thinking, answer
        self._state, self._thinks = _starts(parser, prompt)

    def message(self, text: str, finish_reason: str | None) -> tuple[dict, str | None]:
        reasoning, content = split_reasoning(self._parser, text, self._prompt)
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
            self._state = "thinking" if opened or self._thinks else "answer"
        if self._state == "thinking":
            end = self._text.find(END, self._sent)
            if end < 0:
                upto = len(self._text) - partial_tag(self._text, END)
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
            self._state = "thinking" if self._thinks else "answer"
        deltas = self._thinking(rest) if self._state == "thinking" else self._inner.feed(rest)
        more, finish_reason = self._inner.finish(finish_reason)
        return deltas + more, finish_reason
