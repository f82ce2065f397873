"""Tool calls a model writes in its own syntax, for tool_choice "auto" (`kvserve serve
--enable-auto-tool-choice --tool-call-parser hermes`, vLLM's flags).

"hermes": the syntax of Hermes, Qwen2.5 and Qwen3 chat templates, one block per call:

    Some text first, maybe.<tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

Each block whose JSON parses is a call; the text around the blocks is the reply's content (None
when there is none), less the whitespace between it and the calls; a block that does not parse stays
in the content as text. The last block may lack its closing tag (the model ended, or a stop string
cut it). Streamed or whole, a reply reads the same: content goes out as it comes, but for a tail
that could open a block, and each call whole once its block closes (or at the end), as one
tool_calls delta.
"""

from __future__ import annotations

import json
import uuid

TOOL_PARSERS = ("hermes",)
OPEN, CLOSE = "<tool_call>", "</tool_call>"


def tool_call(name: str, arguments: str) -> dict:
    """One of OpenAI's tool_calls entries."""
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {"name": name, "arguments": arguments}}


class _Number(str):
    """A JSON number as the model wrote it (a float would turn 1e999 into Infinity, which is not JSON)."""


def _not_json(name: str):
    raise ValueError(f"{name} is not JSON")


def loads_exact(text: str):
    """json.loads, with numbers kept as written (for `compact_json`); NaN and Infinity, which
    Python's json takes and JSON does not, are refused."""
    return json.loads(text, parse_float=_Number, parse_int=_Number, parse_constant=_not_json)


def compact_json(value) -> str:
    """JSON text of a loads_exact value, without whitespace: numbers as the model wrote them.
    ValueError for text that is not UTF-8 (a lone surrogate written as an escape)."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{_string(k)}:{compact_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(compact_json(v) for v in value) + "]"
    if isinstance(value, _Number):
        return str(value)
    return _string(value) if isinstance(value, str) else json.dumps(value)


def _string(text: str) -> str:
    text.encode("utf-8")  # UnicodeEncodeError (a ValueError) for a lone surrogate
    return json.dumps(text, ensure_ascii=False)


def _call_from_block(block: str) -> dict | None:
    """A block's call, or None where its JSON is not {"name": str, "arguments": object or JSON text}."""
    try:
        value = loads_exact(block)
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            return None
        arguments = value.get("arguments", value.get("parameters", {}))
        if isinstance(arguments, str):
            arguments = loads_exact(arguments)
        _string(value["name"])
        return tool_call(value["name"], compact_json(arguments))
    except ValueError:
        return None


def partial_tag(text: str, tag: str) -> int:
    """How many characters at the end of `text` could begin `tag` (held back while streaming)."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


class HermesStream:
    """One choice's reply, fed piece by piece (feed(), then finish(); each returns the deltas to
    send: {"content": ...} or {"tool_calls": [...]}); parse_hermes() is this stream over the whole
    text, so the two always agree.

    Content goes out as it comes, but for a tail that could open a block, and whitespace: what
    stands between text and a call (before or after it) is dropped, and trailing whitespace waits
    for what follows. A block whose JSON does not parse goes out as the text it was."""

    def __init__(self):
        self._text = ""
        self._sent = 0  # characters of _text that went out or were taken into a call
        self._in_call = False
        self._num_calls = 0
        self._blank = ""  # trailing whitespace held back
        self._after_call = False  # whitespace from here on follows a call

    @property
    def called(self) -> bool:
        return self._num_calls > 0

    def _content(self, text: str, deltas: list[dict]) -> None:
        if self._after_call:
            text = text.lstrip()
            self._after_call = not text
        text = self._blank + text
        kept = text.rstrip()
        self._blank = text[len(kept):]
        if kept:
            deltas.append({"content": kept})

    def _call(self, call: dict, deltas: list[dict]) -> None:
        self._num_calls += 1
        self._blank, self._after_call = "", True
        deltas.append({"tool_calls": [{"index": self._num_calls - 1, **call}]})

    def _block(self, block: str, closed: bool, deltas: list[dict]) -> None:
        call = _call_from_block(block)
        if call is not None:
            self._call(call, deltas)
        else:
            self._content(OPEN + block + (CLOSE if closed else ""), deltas)

    def feed(self, piece: str) -> list[dict]:
        self._text += piece
        deltas: list[dict] = []
        while True:
            if self._in_call:
                end = self._text.find(CLOSE, self._sent)
                if end < 0:
                    return deltas
                self._block(self._text[self._sent:end], True, deltas)
                self._sent, self._in_call = end + len(CLOSE), False
                continue
            start = self._text.find(OPEN, self._sent)
            upto = start if start >= 0 else len(self._text) - partial_tag(self._text, OPEN)
            self._content(self._text[self._sent:upto], deltas)
            self._sent = upto
            if start < 0:
                return deltas
            self._sent, self._in_call = start + len(OPEN), True

    def finish(self) -> list[dict]:
        deltas: list[dict] = []
        rest, self._sent = self._text[self._sent:], len(self._text)
        if self._in_call:
            self._block(rest, False, deltas)
        else:
            self._content(rest, deltas)
        if self._blank and not self.called:
            deltas.append({"content": self._blank})
        self._blank = ""
        return deltas


def parse_hermes(text: str) -> tuple[str | None, list[dict] | None]:
    """(content, tool calls) of a whole reply, as HermesStream streams it; (text, None) where it
    holds no call that parses."""
    stream = HermesStream()
    deltas = stream.feed(text) + stream.finish()
    content = "".join(delta.get("content", "") for delta in deltas)
    if not stream.called:
        return content, None
    return content or None, [call for delta in deltas for call in delta.get("tool_calls", [])]
