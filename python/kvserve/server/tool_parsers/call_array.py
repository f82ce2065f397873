"""A JSON array of calls, [{"name": ..., "arguments" (or "parameters"): {...}}, ...], read as its
text streams in: a forced "required" reply (forced.py) and Mistral's calls (mistral.py)."""

from __future__ import annotations

from kvserve.server.tool_parsers.call_json import bracket_end, call_from_text
from kvserve.server.tool_parsers.call_stream import CallStream
from kvserve.server.tool_parsers.streamed_call import StreamedCall


class CallArray:
    """A JSON array of call objects read as its text streams in (the "required" reply, Mistral's
    calls), from its "[" at `at`, the calls sent through a CallStream as they open and grow. It is
    done where the array closes or stops being calls; `end`: where it ended (its closing bracket's
    end, or the reply's end where none closes it)."""

    def __init__(self, at: int):
        self._start = self._at = at + 1
        self._mode = "{"  # next: an element "{", a "," (or the array's end), or a "call" streaming in
        self._streamed: StreamedCall | None = None
        self.end: int | None = None

    def advance(self, stream: CallStream, text: str, final: bool, deltas: list[dict]) -> bool:
        """Reads what `text` adds; True once the array is done."""
        while self.end is None:
            if self._mode == "call":
                if not self._call(stream, text, final, deltas):
                    return False
                continue
            rest = text[self._at:].lstrip()
            if not rest and not final:
                return False
            at = len(text) - len(rest)
            if rest and self._mode == "{" and rest[0] == "{":
                self._at, self._mode = at, "call"
            elif rest and self._mode == "," and rest[0] == ",":
                self._at, self._mode = at + 1, "{"
            elif rest[:1] == "]" and self._mode == ",":
                self.end = at + 1
            elif not self._stop(text, final):
                return False
        return True

    def _stop(self, text: str, final: bool) -> bool:
        """Stops reading calls: done where the array's bracket closes (or the reply ends); False
        while neither is in."""
        close = bracket_end(text, self._start - 1)
        if close < 0 and not final:
            return False
        self.end = close if close >= 0 else len(text)
        return True

    def _call(self, stream: CallStream, text: str, final: bool, deltas: list[dict]) -> bool:
        """Streams the element at _at; False while it waits for more text."""
        end = bracket_end(text, self._at)
        limit = end if end >= 0 else len(text)
        self._streamed = stream.follow_call(self._streamed, text, self._at, limit, deltas)
        if self._streamed is None:
            if end < 0 and not final:
                return False
            # Not written name first: a call whole (its arguments a JSON string, say), or the end of the calls.
            call = call_from_text(text[self._at:end]) if end >= 0 else None
            if call is None:
                return self._stop(text, final)
            stream.whole_call(call, deltas)
            self._at, self._mode = end, ","
            return True
        if end < 0:
            if final:
                self.end = len(text)
            return final
        self._at, self._mode, self._streamed = end, ",", None
        return True
