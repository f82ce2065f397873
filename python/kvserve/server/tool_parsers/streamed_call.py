"""A call object whose arguments stream: {"name": "...", "arguments" (or Llama's "parameters"): {...}}
with its name first. It opens once its name and the opening bracket of its arguments are read, and
from then on it is a call, whatever follows: its arguments are what the model wrote, compact, as far
as they are JSON (compact_stream.py). A call written any other way (its arguments first, or as a
JSON string) goes out whole, once its object closes."""

from __future__ import annotations

import json
import re

from kvserve.server.tool_parsers.compact_stream import CompactStream

_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"(?:arguments|parameters)"\s*:\s*(?=\{)')


class StreamedCall:
    def __init__(self, name: str, arguments_at: int):
        self.name = name
        self._fed_to = arguments_at
        self._arguments = CompactStream()

    @staticmethod
    def open(text: str, start: int, end: int) -> StreamedCall | None:
        """The call whose object begins at text[start] (after whitespace), read no further than
        `end`; None while its name and the opening of its arguments are not in (or never will be)."""
        head = _HEAD.match(text, start, end)
        if head is None:
            return None
        try:
            name = json.loads(head[1])
            name.encode("utf-8")  # a lone surrogate is not a name
        except ValueError:
            return None
        return StreamedCall(name, head.end())

    def advance(self, text: str, end: int) -> str:
        """The arguments' compact text that text[:end] adds to what went out before."""
        if end <= self._fed_to:
            return ""
        piece, self._fed_to = text[self._fed_to:end], end
        return self._arguments.feed(piece)
