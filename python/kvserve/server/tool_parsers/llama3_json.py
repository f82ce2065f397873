"""llama3_json (also llama4_json): Llama 3.1-3.3's and Llama 4's JSON calls. The reply is calls
when it opens with one (after <|python_tag|>, where the model writes it), several separated by ";":

    <|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": ...}

"arguments" may stand for "parameters". A reply whose first object is not a call (not JSON, or not
{"name": ..., "parameters": {...}}) is all content, as the model wrote it; text after the calls is
content. Streaming, the reply's opening is held until it shows which it is, then each call goes out
once its object closes."""

from __future__ import annotations

from kvserve.server.tool_parsers.call_json import bracket_end, call_from_text
from kvserve.server.tool_parsers.call_stream import CallStream
from kvserve.server.tool_parsers.tags import opening

TAG = "<|python_tag|>"


class Llama3JsonStream(CallStream):
    def __init__(self):
        super().__init__()
        self._mode = "start"  # then "call" (an object opens at _sent), "between" (calls) or "content"

    def _start(self, final: bool, deltas: list[dict]) -> bool:
        """Reads the reply's opening; False while it cannot tell."""
        start = opening(self._text, TAG, final)
        if start is None:
            return False
        if self._text.startswith("{", start):
            self._sent, self._mode = start, "call"
        else:
            self._mode = "content"
        return True

    def _object(self, final: bool, deltas: list[dict]) -> bool:
        end = bracket_end(self._text, self._sent)
        if end < 0 and not final:
            return False
        call = call_from_text(self._text[self._sent:end]) if end >= 0 else None
        if call is None:  # text: all of the reply, or what follows the calls
            self._mode = "content"
            if not self.called:
                self._sent = 0
            return True
        self._call(call, deltas)
        self._sent, self._mode = end, "between"
        return True

    def _between(self, final: bool, deltas: list[dict]) -> bool:
        i = self._sent
        while i < len(self._text) and (self._text[i].isspace() or self._text[i] == ";"):
            i += 1
        if i == len(self._text):
            if final:
                self._sent = i
            return False
        self._sent, self._mode = i, "call" if self._text[i] == "{" else "content"
        return True

    def _advance(self, final: bool) -> list[dict]:
        deltas: list[dict] = []
        steps = {"start": self._start, "call": self._object, "between": self._between}
        while self._mode in steps and steps[self._mode](final, deltas):
            pass
        if self._mode == "content":
            self._content_upto(len(self._text), deltas)
        return deltas
