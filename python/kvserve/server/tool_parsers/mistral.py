"""mistral: Mistral's calls, after its [TOOL_CALLS] token, in either of its tokenizers' syntaxes:

    [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, {...}]    (Mistral 7B v0.3)
    [TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{}       (v11 and later;
                                                 [ARGS] may be missing, a [CALL_ID]id may precede it)

Text before the calls (and after them) is content. A [TOOL_CALLS] not followed by calls is content
to the end of the reply, the tag included. Streaming, content goes out as it comes, but for a tail
that could be the tag, and each call (an array's calls together) once it closes."""

from __future__ import annotations

import re

from kvserve.server.tool_parsers.call_json import bracket_end, call_from_object, loads_exact
from kvserve.server.tool_parsers.call_stream import CallStream

TAG = "[TOOL_CALLS]"
_HEADER = re.compile(r"([A-Za-z0-9_.-]+)(?:\[CALL_ID\][A-Za-z0-9]*)?(?:\[ARGS\])?\s*")
_WAIT = object()  # not enough text yet


def _calls_from(value) -> list[dict] | None:
    if not isinstance(value, list) or not value:
        return None
    calls = [call_from_object(item) for item in value]
    return None if None in calls else calls


class MistralStream(CallStream):
    def __init__(self):
        super().__init__()
        self._mode = "text"  # or "calls" (a tag at _tag; its calls start at _sent), or "content"
        self._tag = 0

    def _read(self, final: bool):
        """(calls, end) where a tag's calls parse, None where they do not, _WAIT for more text."""
        text, start = self._text, len(self._text) - len(self._text[self._sent:].lstrip())
        opener = text.find("[" if text.startswith("[", start) else "{", start)
        end = bracket_end(text, opener) if opener >= 0 else -1
        if end < 0:
            return None if final else _WAIT
        try:
            if opener == start:  # an array of {"name", "arguments"} objects
                calls = _calls_from(loads_exact(text[opener:end]))
            else:
                header = _HEADER.fullmatch(text, start, opener)
                call = header and call_from_object({"name": header[1], "arguments": loads_exact(text[opener:end])})
                calls = [call] if call else None
        except ValueError:
            return None
        return (calls, end) if calls else None

    def _advance(self, final: bool) -> list[dict]:
        deltas: list[dict] = []
        while True:
            if self._mode == "text":
                at = self._content_to(TAG, final, deltas)
                if at < 0:
                    return deltas
                self._tag, self._sent, self._mode = at, at + len(TAG), "calls"
            elif self._mode == "calls":
                read = self._read(final)
                if read is _WAIT:
                    return deltas
                self._take(read, deltas)
            else:
                self._content_upto(len(self._text), deltas)
                return deltas

    def _take(self, read, deltas: list[dict]) -> None:
        if read is None:
            self._sent, self._mode = self._tag, "content"
            return
        calls, end = read
        for call in calls:
            self._call(call, deltas)
        self._sent, self._mode = end, "text"
