"""hermes: the syntax of Hermes, Qwen2.5 and Qwen3 chat templates, one block per call:

    Some text first, maybe.<tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

Each block whose JSON is a call is one; the text around the blocks is the reply's content; a block
that is not a call stays in the content as text. The last block may lack its closing tag (the model
ended, or a stop string cut it). Streaming, content goes out as it comes, but for a tail that could
open a block, and each call once its block closes (or at the end)."""

from __future__ import annotations

from kvserve.server.tool_parsers.call_json import call_from_text
from kvserve.server.tool_parsers.call_stream import CallStream

OPEN, CLOSE = "<tool_call>", "</tool_call>"


class HermesStream(CallStream):
    def __init__(self):
        super().__init__()
        self._in_call = False

    def _block(self, end: int, closed: bool, deltas: list[dict]) -> None:
        block = self._text[self._sent:end]
        call = call_from_text(block)
        if call is not None:
            self._call(call, deltas)
        else:
            self._content(OPEN + block + (CLOSE if closed else ""), deltas)
        self._sent, self._in_call = end + (len(CLOSE) if closed else 0), False

    def _advance(self, final: bool) -> list[dict]:
        deltas: list[dict] = []
        while True:
            if self._in_call:
                end = self._text.find(CLOSE, self._sent)
                if end >= 0:
                    self._block(end, True, deltas)
                    continue
                if final:
                    self._block(len(self._text), False, deltas)
                return deltas
            start = self._content_to(OPEN, final, deltas)
            if start < 0:
                return deltas
            self._sent, self._in_call = start + len(OPEN), True
