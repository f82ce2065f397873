"""Tool calls a model writes in its own syntax, for tool_choice "auto" (`kvserve serve
--enable-auto-tool-choice --tool-call-parser hermes`, vLLM's flags).

"hermes": the syntax of Hermes, Qwen2.5 and Qwen3 chat templates, one block per call:

    Some text first, maybe.<tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

The text before the first block is the reply's content (None when empty); each block whose JSON
parses is a call. A reply where a block does not parse stays text, whole, as vLLM leaves it. The
last block may lack its closing tag (the model ended, or a stop string cut it).

Streaming, content goes out as it comes, but for any tail that could be the start of "<tool_call>";
each call goes out whole once its block closes (or at the end), as one tool_calls delta.
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


def loads_exact(text: str):
    """json.loads, with numbers kept as written (for `compact_json`)."""
    return json.loads(text, parse_float=_Number, parse_int=_Number)


def compact_json(value) -> str:
    """JSON text of a loads_exact value, without whitespace: numbers as the model wrote them."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{compact_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(compact_json(v) for v in value) + "]"
    if isinstance(value, _Number):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def _call_from_block(block: str) -> dict | None:
    """A block's call, or None where its JSON is not {"name": str, "arguments": object or JSON text}."""
    try:
        value = loads_exact(block)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = loads_exact(arguments)
        except ValueError:
            return None
    return tool_call(value["name"], compact_json(arguments))


def parse_hermes(text: str) -> tuple[str | None, list[dict] | None]:
    """(content, tool calls) of a whole reply; (text, None) where it holds no call that parses."""
    start = text.find(OPEN)
    if start < 0:
        return text, None
    calls = []
    position = start
    while position >= 0:
        body_start = position + len(OPEN)
        end = text.find(CLOSE, body_start)
        call = _call_from_block(text[body_start:end if end >= 0 else len(text)])
        if call is None:
            return text, None
        calls.append(call)
        position = text.find(OPEN, end + len(CLOSE)) if end >= 0 else -1
    content = text[:start]
    return (content if content.strip() else None), calls


def _held_back(text: str) -> int:
    """How many characters at the end of `text` could begin the opening tag."""
    for size in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if OPEN.startswith(text[-size:]):
            return size
    return 0


class HermesStream:
    """One choice's streamed reply: feed() each new piece of text, then finish(); each returns the
    deltas to send ({"content": ...} or {"tool_calls": [...]}). `called`: whether a call went out."""

    def __init__(self):
        self._text = ""
        self._sent = 0  # characters of _text that went out or were taken into a call
        self._in_call = False
        self._num_calls = 0

    @property
    def called(self) -> bool:
        return self._num_calls > 0

    def _call_delta(self, call: dict) -> dict:
        self._num_calls += 1
        return {"tool_calls": [{"index": self._num_calls - 1, **call}]}

    def feed(self, piece: str) -> list[dict]:
        self._text += piece
        deltas = []
        while True:
            if self._in_call:
                end = self._text.find(CLOSE, self._sent)
                if end < 0:
                    return deltas
                block = self._text[self._sent:end]
                call = _call_from_block(block)
                # A block that does not parse goes out as the text it was.
                deltas.append(self._call_delta(call) if call is not None else {"content": OPEN + block + CLOSE})
                self._sent, self._in_call = end + len(CLOSE), False
                continue
            start = self._text.find(OPEN, self._sent)
            upto = start if start >= 0 else len(self._text) - _held_back(self._text)
            content = self._text[self._sent:upto]
            if content and not (self.called and not content.strip()):  # not the newlines between calls
                deltas.append({"content": content})
            self._sent = upto
            if start < 0:
                return deltas
            self._sent, self._in_call = start + len(OPEN), True

    def finish(self) -> list[dict]:
        rest = self._text[self._sent:]
        self._sent = len(self._text)
        if self._in_call:
            call = _call_from_block(rest)
            return [self._call_delta(call) if call is not None else {"content": OPEN + rest}]
        return [{"content": rest}] if rest else []
