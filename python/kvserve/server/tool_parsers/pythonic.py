"""pythonic (also llama4_pythonic): calls written as a Python list, as Llama 3.2's and Llama 4's
templates ask for (Llama 4 wraps it in <|python_start|> ... <|python_end|>):

    [get_weather(city="Paris", days=3), get_time(zone="CET")]

Each call takes keyword arguments of Python literals (strings, numbers, True/False/None, lists,
tuples and dicts of them), which become the call's JSON arguments. A reply that does not open with
such a list is all content, as the model wrote it; text after the list is content.

Streaming, as the JSON parsers stream (streamed_call.py): a call opens once its name and "(" are
read, and from then on it is a call, whatever follows; its arguments go out as the model writes
them: each keyword as soon as its "=" is read, a string value's text as it comes (python_strings.py;
adjacent literals joined, as Python joins them), any other value once the "," or ")" after it is,
and the closing brace with the ")". What does not read as such (a positional argument, a value
that is not a literal, text that is no call after one) ends the calls there: the call's arguments
are what went out, and the rest of the list is dropped."""

from __future__ import annotations

import ast
import re
import warnings

from kvserve.server.tool_parsers.call_json import bracket_end, compact_json
from kvserve.server.tool_parsers.call_stream import CallStream
from kvserve.server.tool_parsers.python_strings import open_literal, read_body, scan_body
from kvserve.server.tool_parsers.tags import opening

START, END = "<|python_start|>", "<|python_end|>"
_BLANK = r"(?:\s|\\\n)*"  # whitespace, and backslash-newline (Python's explicit line joining)
_SKIP = re.compile(_BLANK)
_NAME = re.compile(rf"([A-Za-z_]\w*){_BLANK}")
_KEYWORD = re.compile(rf"([A-Za-z_]\w*){_BLANK}=")
_KEYWORD_START = re.compile(rf"(?:[A-Za-z_]\w*{_BLANK})?\\?")  # what may still become one
_QUOTES = "\"'"


def _value_end(text: str, start: int, final: bool) -> int:
    """Where the value starting at text[start] ends: the index of the "," or ")" after it outside
    brackets and strings (python_strings.py's reading of them); -1 while the text so far cannot
    tell; -2 where a "]" or "}" closes what the value did not open, or a line break ends a one-quote
    string (no literal either way)."""
    depth, i = 0, start
    while i < len(text):
        c = text[i]
        if c in _QUOTES:
            literal = open_literal(text, i, final)
            if literal is False:
                return -1  # " or "" at the end: a one-quote string, or a triple quote's start
            _, quote, body = literal
            i, _ = scan_body(text, body, quote)
            if i >= len(text):
                return -1
            if text[i] == "\n":
                return -2
            i += len(quote)
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0:
                return i if c == ")" else -2
            depth -= 1
        elif c == "," and depth == 0:
            return i
        i += 1
    return -1


def _json_literal(source: str) -> str | None:
    """The compact JSON of a Python literal; None for anything else."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an unknown escape stays as written, as Python keeps it
            return compact_json(ast.literal_eval(source.strip()))
    except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
        return None


class PythonicStream(CallStream):
    def __init__(self):
        super().__init__()
        # "start", then "list" (a call or "]" next), "arguments" (a keyword or ")" next), "value",
        # "string" (in a string value's literal), "joined" (past one: another, "," or ")" next),
        # "after" (past a call: "," or "]" next), "broken" (to the list's end), "end", "content".
        self._mode = "start"
        self._list_at = 0  # where the list's "[" is
        self._keywords = 0  # of the open call
        self._literal = ("", '"')  # the string value's literal being read: its prefix and quote

    # One step of the list's reading per mode, from self._sent (`at`; `skipped`: past the blanks
    # there, `rest`: the text from there); each returns False when it needs more text.

    def _list(self, text, at, skipped, rest, final, deltas) -> bool:
        head = _NAME.match(text, skipped)
        if head is not None and head.end() < len(text) and text[head.end()] == "(":
            self.open_call(head[1], deltas)
            self._sent, self._mode, self._keywords = head.end() + 1, "arguments", 0
        elif not final and (head is not None and text[head.end():] in ("", "\\") or not rest):
            return False
        elif self.called and rest.startswith("]"):
            self._sent, self._mode = skipped + 1, "end"
        elif self.called:
            self._mode = "broken"
        else:
            self._sent, self._mode = 0, "content"
        return True

    def _arguments(self, text, at, skipped, rest, final, deltas) -> bool:
        keyword = _KEYWORD.match(text, skipped)
        if rest.startswith(")"):
            self.more_arguments("}" if self._keywords else "{}", deltas)
            self._sent, self._mode = skipped + 1, "after"
        elif keyword is not None and keyword.end() == len(text) and not final:
            return False  # "=" or "=="
        elif keyword is not None and not text.startswith("=", keyword.end()):
            self.more_arguments(("," if self._keywords else "{") + compact_json(keyword[1]) + ":", deltas)
            self._sent, self._mode, self._keywords = keyword.end(), "value", self._keywords + 1
        elif not final and _KEYWORD_START.fullmatch(rest):
            return False
        else:
            self._mode = "broken"
        return True

    def _string_opens(self, text, skipped, rest, final) -> bool | None:
        """Whether a string literal opens at `skipped` (then it is read next); None while the text
        so far cannot tell."""
        literal = open_literal(text, skipped, final) if rest else False
        if literal is False and not final:
            return None
        if literal:
            self._literal, self._sent, self._mode = literal[:2], literal[2], "string"
        return bool(literal)

    def _value(self, text, at, skipped, rest, final, deltas) -> bool:
        opens = self._string_opens(text, skipped, rest, final)
        if opens is None:
            return False
        if opens:
            self.more_arguments('"', deltas)
            return True
        end = _value_end(text, at, final)
        if end == -1 and not final:
            return False
        value = _json_literal(text[at:end]) if end >= 0 else None
        if value is None:
            self._mode = "broken"
        else:
            self.more_arguments(value, deltas)
            self._sent, self._mode = end + (text[end] == ","), "arguments"
        return True

    def _string(self, text, at, skipped, rest, final, deltas) -> bool:
        content, self._sent, state = read_body(text, at, *self._literal)
        if content:
            self.more_arguments(compact_json(content)[1:-1], deltas)
        if state == "open" and not final:
            return False
        self._mode = "joined" if state == "closed" else "broken"
        return True

    def _joined(self, text, at, skipped, rest, final, deltas) -> bool:
        opens = self._string_opens(text, skipped, rest, final)  # the next literal, joined to this one
        if opens is None:
            return False
        if not opens and rest[:1] in (",", ")"):
            self.more_arguments('"', deltas)
            self._sent, self._mode = skipped + (rest[0] == ","), "arguments"
        elif not opens:
            self._mode = "broken"
        return True

    def _after(self, text, at, skipped, rest, final, deltas) -> bool:
        if not rest and not final:
            return False
        if rest.startswith(","):
            self._sent, self._mode = skipped + 1, "list"
        elif rest.startswith("]"):
            self._sent, self._mode = skipped + 1, "end"
        else:
            self._mode = "broken"
        return True

    def _broken(self, text, at, skipped, rest, final, deltas) -> bool:
        """The rest of the list, up to its "]", dropped."""
        end = bracket_end(text, self._list_at, quotes=_QUOTES)
        if end < 0 and not final:
            return False
        self._sent, self._mode = (end if end >= 0 else len(text)), "end"
        return True

    _STEPS = {"list": _list, "arguments": _arguments, "value": _value, "string": _string, "joined": _joined,
              "after": _after, "broken": _broken}

    def _advance(self, final: bool) -> list[dict]:
        deltas: list[dict] = []
        if self._mode == "start":
            start = opening(self._text, START, final)
            if start is None:
                return deltas
            is_list = self._text.startswith("[", start)
            self._sent, self._mode, self._list_at = (start + 1, "list", start) if is_list else (0, "content", 0)
        while self._mode not in ("end", "content"):
            text, at = self._text, self._sent
            skipped = _SKIP.match(text, at).end()
            rest = text[skipped:]
            if rest == "\\" and not final:
                return deltas  # a line joining's backslash, its newline to come
            if not self._STEPS[self._mode](self, text, at, skipped, rest, final, deltas):
                return deltas
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
