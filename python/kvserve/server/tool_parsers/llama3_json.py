"""llama3_json (also llama4_json): Llama 3.1-3.3's and Llama 4's JSON calls. The reply is calls
when it opens with one (after <|python_tag|>, where the model writes it), several separated by ";",
or text and then <|python_tag|> and the calls:

    <|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": ...}

"arguments" may stand for "parameters". Where the first object is not a call (not JSON, or not
{"name": ..., "parameters": {...}}) the reply is content, as the model wrote it, from where the
calls would have begun; text after the calls is content. Streaming, the reply's opening is held
until it shows which it is, text goes out as it comes (but for a tail that could be the tag), and a
call written name first streams its arguments as they come (streamed_call.py; from then on it is a
call, whatever follows), any other goes out once its object closes."""

from __future__ import annotations

from kvserve.server.tool_parsers.call_json import bracket_end, call_from_text
from kvserve.server.tool_parsers.call_stream import CallStream
from kvserve.server.tool_parsers.streamed_call import StreamedCall
from kvserve.server.tool_parsers.tags import opening

TAG = "<|python_tag|>"


class Llama3JsonStream(CallStream):
    def __init__(self):
        super().__init__()
        # then "text" (until a tag), "call" (an object opens at _sent), "between" (calls) or "content" (to the end)
        self._mode = "start"
        self._calls_from = 0  # where the calls began: the reply's content from there if the first is not one
        self._streamed: StreamedCall | None = None  # the call of the object at _sent, once it opened

    def _start(self, final: bool, deltas: list[dict]) -> bool:
        """Reads the reply's opening; False while it cannot tell."""
        start = opening(self._text, TAG, final)
        if start is None:
            return False
        if self._text.startswith("{", start):
            self._sent, self._mode = start, "call"
        else:
            self._mode = "text"
        return True

    def _before_tag(self, final: bool, deltas: list[dict]) -> bool:
        at = self._content_to(TAG, final, deltas)
        if at < 0:
            return False
        start = len(self._text) - len(self._text[at + len(TAG):].lstrip())
        if start == len(self._text) and not final:
            return False  # what follows the tag is not here yet
        if self._text.startswith("{", start):
            self._calls_from, self._sent, self._mode = at, start, "call"
        else:
            self._mode = "content"
        return True

    def _object(self, final: bool, deltas: list[dict]) -> bool:
        end = bracket_end(self._text, self._sent)
        self._streamed = self.follow_call(self._streamed, self._text, self._sent, end if end >= 0 else len(self._text),
                                          deltas)
        if self._streamed is not None:
            if end < 0 and not final:
                return False
            self._sent, self._mode, self._streamed = end if end >= 0 else len(self._text), "between", None
            return True
        if end < 0 and not final:
            return False
        call = call_from_text(self._text[self._sent:end]) if end >= 0 else None
        if call is None:  # text: from where the calls began, or what follows the calls
            self._mode = "content"
            if not self.called:
                self._sent = self._calls_from
            return True
        self.whole_call(call, deltas)
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
        steps = {"start": self._start, "text": self._before_tag, "call": self._object, "between": self._between}
        while self._mode in steps and steps[self._mode](final, deltas):
            pass
        if self._mode == "content":
            self._content_upto(len(self._text), deltas)
        return deltas
