"""pythonic (also llama4_pythonic): calls written as a Python list, as Llama 3.2's and Llama 4's
templates ask for (Llama 4 wraps it in <|python_start|> ... <|python_end|>):

    [get_weather(city="Paris", days=3), get_time(zone="CET")]

Each call takes keyword arguments of Python literals (strings, numbers, True/False/None, lists,
tuples and dicts of them), which become the call's JSON arguments. A reply that does not open with
such a list is all content, as the model wrote it; text after the list is content. Streaming, the
reply's opening is held until it shows which it is, then the calls go out once the list closes."""

from __future__ import annotations

import ast

from kvserve.server.tool_parsers.call_json import bracket_end, compact_json, tool_call
from kvserve.server.tool_parsers.call_stream import CallStream
from kvserve.server.tool_parsers.tags import opening

START, END = "<|python_start|>", "<|python_end|>"


def _calls(source: str) -> list[dict] | None:
    """The calls a Python list of calls stands for; None for any other text."""
    try:
        tree = ast.parse(source, mode="eval").body
        if not isinstance(tree, ast.List) or not tree.elts:
            return None
        calls = []
        for node in tree.elts:
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args:
                return None
            if any(keyword.arg is None for keyword in node.keywords):  # **kwargs
                return None
            arguments = {keyword.arg: ast.literal_eval(keyword.value) for keyword in node.keywords}
            calls.append(tool_call(node.func.id, compact_json(arguments)))
        return calls
    except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
        return None


class PythonicStream(CallStream):
    def __init__(self):
        super().__init__()
        self._mode = "start"  # then "list" (it opens at _sent), "end" (past the list) or "content"

    def _advance(self, final: bool) -> list[dict]:
        deltas: list[dict] = []
        if self._mode == "start":
            start = opening(self._text, START, final)
            if start is None:
                return deltas
            self._sent, self._mode = (start, "list") if self._text.startswith("[", start) else (0, "content")
        if self._mode == "list":
            end = bracket_end(self._text, self._sent, quotes="\"'")
            if end < 0 and not final:
                return deltas
            calls = _calls(self._text[self._sent:end]) if end >= 0 else None
            if calls is None:
                self._sent, self._mode = 0, "content"
            else:
                for call in calls:
                    self.whole_call(call, deltas)
                self._sent, self._mode = end, "end"
        if self._mode == "end":
            rest = self._text[self._sent:].lstrip()
            if rest.startswith(END):
                self._sent, self._mode = len(self._text) - len(rest) + len(END), "content"
            elif not final and END.startswith(rest):
                return deltas
            else:
                self._mode = "content"
        self._content_upto(len(self._text), deltas)
        return deltas
