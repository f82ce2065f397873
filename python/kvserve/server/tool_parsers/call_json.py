"""JSON as tool calls hold it: a call entry, arguments kept as the model wrote their numbers, and
where a bracketed value ends in text still streaming in."""

from __future__ import annotations

import json
import uuid


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
    """JSON text of a loads_exact value (or of plain Python values), without whitespace: numbers as
    the model wrote them. ValueError for text that is not UTF-8 (a lone surrogate written as an
    escape) and for floats JSON has no words for (NaN, Infinity)."""
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise ValueError("object keys must be strings")
        return "{" + ",".join(f"{_string(k)}:{compact_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(compact_json(v) for v in value) + "]"
    if isinstance(value, _Number):
        return str(value)
    if isinstance(value, str):
        return _string(value)
    if value is None or isinstance(value, (bool, int, float)):
        return json.dumps(value, allow_nan=False)
    raise ValueError(f"{type(value).__name__} is not JSON")


def _string(text: str) -> str:
    text.encode("utf-8")  # UnicodeEncodeError (a ValueError) for a lone surrogate
    return json.dumps(text, ensure_ascii=False)


def call_from_object(value) -> dict | None:
    """The call a parsed {"name": str, "arguments" (or Llama's "parameters"): object or its JSON
    text} stands for; None for any other value."""
    try:
        if not isinstance(value, dict) or type(value.get("name")) is not str:  # a _Number is a str too
            return None
        arguments = value.get("arguments", value.get("parameters", {}))
        if isinstance(arguments, str):
            arguments = loads_exact(arguments)
        if not isinstance(arguments, dict):
            return None
        _string(value["name"])
        return tool_call(value["name"], compact_json(arguments))
    except ValueError:
        return None


def call_from_text(text: str) -> dict | None:
    """call_from_object of JSON text; None where it does not parse."""
    try:
        return call_from_object(loads_exact(text))
    except ValueError:
        return None


def bracket_end(text: str, start: int, quotes: str = '"') -> int:
    """Where the bracketed value opening at text[start] ("{" or "[") ends (the index after its
    closing bracket), skipping brackets inside strings quoted with `quotes`; -1 while it is open.
    Brackets are counted, not matched: the value's parser judges it."""
    depth, quote, escaped = 0, None, False
    for i in range(start, len(text)):
        c = text[i]
        if quote is not None:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == quote:
                quote = None
        elif c in quotes:
            quote = c
        elif c in "{[(":
            depth += 1
        elif c in "}])":
            depth -= 1
            if depth == 0:
                return i + 1
    return -1
