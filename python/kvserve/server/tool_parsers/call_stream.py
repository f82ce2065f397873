"""What every tool-call parser shares: a reply fed piece by piece (feed(), then finish(); each
returns the deltas to send: {"content": ...} or {"tool_calls": [...]}, a call whole or its opening
and then its arguments piece by piece, as OpenAI streams them), and the whole reply read as that
stream over all of it (`parse`), so a reply streamed and a reply whole always agree.

Content goes out as it comes, but for whitespace: what stands between text and a call (before or
after it) is dropped, and trailing whitespace waits for what follows."""

from __future__ import annotations

from kvserve.server.tool_parsers.call_json import tool_call
from kvserve.server.tool_parsers.streamed_call import StreamedCall
from kvserve.server.tool_parsers.tags import partial_tag


class CallStream:
    """One choice's reply. A parser keeps `_text` (all fed so far) and `_sent` (how much of it went
    out as content or was taken into calls), and sends through `_content` and `_call`."""

    def __init__(self):
        self._text = ""
        self._sent = 0
        self._num_calls = 0
        self._blank = ""  # trailing whitespace held back
        self._after_call = False  # whitespace from here on follows a call

    @property
    def called(self) -> bool:
        return self._num_calls > 0

    def _content(self, text: str, deltas: list[dict]) -> None:
        if self._after_call:
            text = text.lstrip()
            self._after_call = not text
        text = self._blank + text
        kept = text.rstrip()
        self._blank = text[len(kept):]
        if kept:
            deltas.append({"content": kept})

    def _content_upto(self, end: int, deltas: list[dict]) -> None:
        """_text from _sent up to `end` as content."""
        self._content(self._text[self._sent:end], deltas)
        self._sent = max(self._sent, end)

    def _content_to(self, tag: str, final: bool, deltas: list[dict]) -> int:
        """Send the content from _sent up to the next `tag` (without one, up to a tail that could
        begin it, which waits for more text unless `final`); where the tag starts, -1 for none."""
        at = self._text.find(tag, self._sent)
        held = 0 if at >= 0 or final else partial_tag(self._text, tag)
        self._content_upto(at if at >= 0 else len(self._text) - held, deltas)
        return at

    def whole_call(self, call: dict, deltas: list[dict]) -> None:
        """A call, whole (or the opening of one whose arguments follow: `more_arguments`)."""
        self._num_calls += 1
        self._blank, self._after_call = "", True
        deltas.append({"tool_calls": [{"index": self._num_calls - 1, **call}]})

    def open_call(self, name: str, deltas: list[dict]) -> None:
        self.whole_call(tool_call(name, ""), deltas)

    def more_arguments(self, piece: str, deltas: list[dict]) -> None:
        """More of the last call's arguments."""
        if piece:
            deltas.append({"tool_calls": [{"index": self._num_calls - 1, "function": {"arguments": piece}}]})

    def follow_call(self, streamed: StreamedCall | None, text: str, start: int, end: int,
                    deltas: list[dict]) -> StreamedCall | None:
        """The call whose object begins at text[start] (`streamed`, once it opened), opened as soon
        as its head is in before `end`, and its arguments sent as far as `end`; None while it has
        not opened (or never will: streamed_call.py)."""
        if streamed is None:
            streamed = StreamedCall.open(text, start, end)
            if streamed is None:
                return None
            self.open_call(streamed.name, deltas)
        self.more_arguments(streamed.advance(text, end), deltas)
        return streamed

    def _advance(self, final: bool) -> list[dict]:
        """The deltas _text allows now; `final`: nothing more comes."""
        raise NotImplementedError

    def feed(self, piece: str) -> list[dict]:
        self._text += piece
        return self._advance(final=False)

    def finish(self) -> list[dict]:
        deltas = self._advance(final=True)
        self._content_upto(len(self._text), deltas)
        if self._blank and not self.called:
            deltas.append({"content": self._blank})
        self._blank = ""
        return deltas


def parse(stream: CallStream, text: str) -> tuple[str | None, list[dict] | None]:
    """(content, tool calls) of a whole reply, as `stream` streams it, joined as a client joins the
    deltas; (text, None) where it holds no call."""
    deltas = stream.feed(text) + stream.finish()
    content = "".join(delta.get("content", "") for delta in deltas)
    if not stream.called:
        return content, None
    calls: list[dict] = []
    for delta in deltas:
        for part in delta.get("tool_calls", []):
            if part["index"] == len(calls):
                calls.append({"id": part["id"], "type": part["type"], "function": dict(part["function"])})
            else:
                calls[part["index"]]["function"]["arguments"] += part["function"]["arguments"]
    return content or None, calls
