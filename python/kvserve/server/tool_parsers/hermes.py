"""hermes: the syntax of Hermes, Qwen2.5 and Qwen3 chat templates, one block per call:

    Some text first, maybe.<tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

Each block whose JSON is a call is one; the text around the blocks is the reply's content; a block
that is not a call stays in the content as text. The last block may lack its closing tag (the model
ended, or a stop string cut it). Streaming, content goes out as it comes, but for a tail that could
open a block; a call written name first streams its arguments as they come (streamed_call.py), any
other goes out once its block closes (or at the end)."""

from __future__ import annotations

from kvserve.server.tool_parsers.call_json import call_from_text
from kvserve.server.tool_parsers.call_stream import CallStream
from kvserve.server.tool_parsers.streamed_call import StreamedCall
from kvserve.server.tool_parsers.tags import partial_tag

OPEN, CLOSE = "<tool_call>", "</tool_call>"


class HermesStream(CallStream):
    def __init__(self):
        super().__init__()
        self._in_call = False
        self._streamed: StreamedCall | None = None  # the block's call, once it opened

    def _block(self, end: int, closed: bool, deltas: list[dict]) -> None:
        block = self._text[self._sent:end]
        call = call_from_text(block)
        if call is not None:
            self.whole_call(call, deltas)
        else:
            self._content(OPEN + block + (CLOSE if closed else ""), deltas)
        self._sent, self._in_call = end + (len(CLOSE) if closed else 0), False

    def _stream_call(self, block_end: int | None, deltas: list[dict]) -> None:
        """Opens the block's call once it can, and sends its arguments as far as the block goes (a
        tail that could be the closing tag waits)."""
        end = block_end if block_end is not None else len(self._text) - partial_tag(self._text, CLOSE)
        self._streamed = self.follow_call(self._streamed, self._text, self._sent, end, deltas)

    def _advance(self, final: bool) -> list[dict]:
        deltas: list[dict] = []
        while True:
            if self._in_call:
                end = self._text.find(CLOSE, self._sent)
                block_end = end if end >= 0 else len(self._text) if final else None
                self._stream_call(block_end, deltas)
                if block_end is None:
                    return deltas
                if self._streamed is None:
                    self._block(block_end, end >= 0, deltas)
                else:
                    self._sent = block_end + (len(CLOSE) if end >= 0 else 0)
                    self._in_call, self._streamed = False, None
                continue
            start = self._content_to(OPEN, final, deltas)
            if start < 0:
                return deltas
            self._sent, self._in_call = start + len(OPEN), True
