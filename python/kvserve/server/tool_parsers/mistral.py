"""mistral: Mistral's calls, after its [TOOL_CALLS] token, in either of its tokenizers' syntaxes:

    [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, {...}]    (Mistral 7B v0.3)
    [TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{}       (v11 and later;
                                                 [ARGS] may be missing, a [CALL_ID]id may precede it)

Text before the calls (and after them) is content. A [TOOL_CALLS] not followed by a call is content
to the end of the reply, the tag included. Streaming, content goes out as it comes, but for a tail
that could be the tag, and each call's arguments as they come: a call opens with the bracket of its
arguments (after its name), and from then on it is a call, whatever follows (streamed_call.py)."""

from __future__ import annotations

import re

from kvserve.server.tool_parsers.call_array import CallArray
from kvserve.server.tool_parsers.call_json import bracket_end
from kvserve.server.tool_parsers.call_stream import CallStream
from kvserve.server.tool_parsers.compact_stream import CompactStream

TAG = "[TOOL_CALLS]"
_HEADER = re.compile(r"([A-Za-z0-9_.-]+)(?:\[CALL_ID\][A-Za-z0-9]*)?(?:\[ARGS\])?\s*")


class MistralStream(CallStream):
    def __init__(self):
        super().__init__()
        # "text"; "calls" (a tag at _tag; its calls start at _sent); an "array" of calls or a "named"
        # call's arguments streaming in; or "content" (to the reply's end).
        self._mode = "text"
        self._tag = 0
        self._array: CallArray | None = None
        self._calls_before = 0  # calls made before the array
        self._compact: CompactStream | None = None

    def _after_tag(self, final: bool, deltas: list[dict]) -> bool:
        """Reads what the tag opens: an array of calls, or a named call; False while it cannot tell."""
        text = self._text
        start = len(text) - len(text[self._sent:].lstrip())
        if text.startswith("[", start):
            self._array, self._calls_before, self._mode = CallArray(start), self._num_calls, "array"
            return True
        opener = text.find("{", start)
        header = _HEADER.fullmatch(text, start, opener) if opener >= 0 else None
        if header is None:
            if opener < 0 and not final:
                return False
            self._sent, self._mode = self._tag, "content"
            return True
        self.open_call(header[1], deltas)
        self._sent, self._compact, self._mode = opener, CompactStream(), "named"
        return True

    def _named(self, final: bool, deltas: list[dict]) -> bool:
        """Streams the named call's arguments, which begin at _sent; False while they are open."""
        compact = self._compact
        fed = self._sent + compact.read
        self.more_arguments(compact.feed(self._text[fed:]), deltas)
        if compact.end is not None:
            end = self._sent + compact.end
        elif compact.failed:  # the call ends where its bracket does, or with the reply
            end = bracket_end(self._text, self._sent)
            end = len(self._text) if end < 0 and final else end
        else:
            end = len(self._text) if final else -1
        if end < 0:
            return False
        self._sent, self._mode = end, "text"
        return True

    def _advance(self, final: bool) -> list[dict]:
        deltas: list[dict] = []
        while True:
            if self._mode == "text":
                at = self._content_to(TAG, final, deltas)
                if at < 0:
                    return deltas
                self._tag, self._sent, self._mode = at, at + len(TAG), "calls"
            elif self._mode == "calls":
                if not self._after_tag(final, deltas):
                    return deltas
            elif self._mode == "named":
                if not self._named(final, deltas):
                    return deltas
            elif self._mode == "array":
                if not self._array.advance(self, self._text, final, deltas):
                    return deltas
                if self._num_calls > self._calls_before:
                    self._sent, self._mode = self._array.end, "text"
                else:  # not calls: text, from the tag on
                    self._sent, self._mode = self._tag, "content"
            else:
                self._content_upto(len(self._text), deltas)
                return deltas
