"""The replies of a forced tool choice (server/tools.py), held by a grammar to the calls' JSON, read
as they stream:

    a named function   the reply is that function's arguments: it is the call from its first
                       character, its arguments what the model writes, as far as they are JSON
    "required"         [{"name": ..., "parameters": {...}}, ...]: each element a call once its name
                       and the opening of its parameters are in; a reply cut short before the first
                       one is text

A call's arguments stream as they come (compact_stream.py), as vLLM streams a forced call's."""

from __future__ import annotations

from kvserve.server.tool_parsers.call_array import CallArray
from kvserve.server.tool_parsers.call_stream import CallStream
from kvserve.server.tool_parsers.compact_stream import CompactStream


class NamedCallStream(CallStream):
    def __init__(self, name: str):
        super().__init__()
        self._name = name
        self._compact = CompactStream()

    def _advance(self, final: bool) -> list[dict]:
        deltas: list[dict] = []
        if not self.called:
            self.open_call(self._name, deltas)
        self.more_arguments(self._compact.feed(self._text[self._sent:]), deltas)
        self._sent = len(self._text)
        return deltas


class CallArrayStream(CallStream):
    """The "required" reply. _sent stays at 0 until a call opens: the reply is text if none does."""

    def __init__(self):
        super().__init__()
        self._array: CallArray | None = None

    def _advance(self, final: bool) -> list[dict]:
        deltas: list[dict] = []
        if self._array is None:
            rest = self._text.lstrip()
            if not rest.startswith("["):
                return deltas
            self._array = CallArray(len(self._text) - len(rest))
        if self._array.advance(self, self._text, final, deltas) and self.called:
            self._sent = len(self._text)  # what follows the calls is not read
        return deltas
