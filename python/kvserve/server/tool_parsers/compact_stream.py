"""A JSON object or array read as its text streams in, written compact as it goes: the text a call's
arguments stream as. What it writes is what call_json.compact_json writes for the whole value (no
whitespace outside strings, strings as json.dumps writes them, numbers as the model wrote them) but
for duplicate keys, which it keeps, as the model wrote them (a JSON reader takes the last). A number
or a literal goes out once the character after it shows it whole; a string's characters go out as
they come, but for an escape not yet whole."""

from __future__ import annotations

import json
import re

_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_LITERALS = ("true", "false", "null")
_ENCODED_ESCAPES = {'"': '\\"', "\\": "\\\\", "/": "/", "b": "\\b", "f": "\\f", "n": "\\n", "r": "\\r", "t": "\\t"}
_HEX = frozenset("0123456789abcdefABCDEF")


def _encoded(char: str) -> str:
    """One decoded character of a string as json.dumps writes it inside the quotes."""
    return json.dumps(char, ensure_ascii=False)[1:-1]


class CompactStream:
    """Feed it text from the value's opening bracket on; each feed returns the compact text it adds.
    `end` is set once the value closes (how many characters fed it took), `failed` once the text
    stops being JSON (nothing more is written: what was written is the value as far as it was JSON)."""

    def __init__(self):
        self.end: int | None = None
        self.failed = False
        self.read = 0  # characters taken so far (none past the value's end)
        self._stack: list[str] = []  # the open containers' closing brackets
        # What may come next: "value", "first value" (a value or "]"), "key", "first key" (a key or "}"),
        # "colon", "after" (a value's end: "," or the container's bracket), "string", "token".
        self._expect = "value"
        self._string_is_key = False
        self._escape = ""  # an escape being read, from its backslash
        self._token = ""  # a number or literal being read

    @property
    def done(self) -> bool:
        return self.end is not None or self.failed

    def feed(self, text: str) -> str:
        out: list[str] = []
        for char in text:
            if self.done:
                break
            self.read += 1
            if not self._step(char, out):
                self.failed = True
        return "".join(out)

    def _step(self, char: str, out: list[str]) -> bool:
        """Takes one character; False where it is not JSON."""
        expect = self._expect
        if expect == "string":
            return self._string_char(char, out)
        if expect == "token":
            if char.isalnum() or char in "+-.":
                self._token += char
                return True
            if not self._end_token(out):
                return False
            expect = self._expect
        if char in " \t\r\n":
            return True
        if expect in ("value", "first value") and char in "{[":
            self._stack.append("}" if char == "{" else "]")
            self._expect = "first key" if char == "{" else "first value"
            out.append(char)
            return True
        if not self._stack:  # a value other than an object or an array: not what this reads
            return False
        if char in "}]":
            if char != self._stack[-1] or expect not in ("after", "first key", "first value"):
                return False
            self._stack.pop()
            out.append(char)
            self._close_value()
            return True
        if expect in ("value", "first value"):
            if char == '"':
                self._open_string(False, out)
            elif char == "-" or char.isalnum():
                self._token, self._expect = char, "token"
            else:
                return False
            return True
        if expect in ("key", "first key"):
            if char != '"':
                return False
            self._open_string(True, out)
            return True
        if expect == "colon" and char == ":":
            self._expect = "value"
            out.append(char)
            return True
        if expect == "after" and char == ",":
            self._expect = "key" if self._stack[-1] == "}" else "value"
            out.append(char)
            return True
        return False

    def _close_value(self) -> None:
        if self._stack:
            self._expect = "after"
        else:
            self.end = self.read

    def _end_token(self, out: list[str]) -> bool:
        token, self._token = self._token, ""
        if token not in _LITERALS and not _NUMBER.fullmatch(token):
            return False  # NaN, Infinity and the like are not JSON
        out.append(token)
        self._close_value()
        return True

    def _open_string(self, is_key: bool, out: list[str]) -> None:
        self._string_is_key, self._expect = is_key, "string"
        out.append('"')

    def _string_char(self, char: str, out: list[str]) -> bool:
        if self._escape:
            return self._escape_char(char, out)
        if char == "\\":
            self._escape = char
        elif char == '"':
            out.append(char)
            if self._string_is_key:
                self._expect = "colon"
            else:
                self._close_value()
        elif ord(char) < 0x20:
            return False  # a control character stands in a string only as an escape
        else:
            out.append(char)
        return True

    def _escape_char(self, char: str, out: list[str]) -> bool:
        """A character of an escape: \\n and the like whole at once; \\uXXXX once its four digits are
        in, and a high surrogate's once the low one that must follow it is."""
        escape = self._escape + char
        if len(escape) == 2 and char != "u":
            self._escape = ""
            if char not in _ENCODED_ESCAPES:
                return False
            out.append(_ENCODED_ESCAPES[char])
            return True
        # \\uXXXX, or \\uXXXX\\uXXXX for a surrogate pair: the characters at 6 and 7 are a backslash and "u".
        wanted = {1: "u", 6: "\\", 7: "u"}.get(len(escape) - 1)
        if not (char == wanted if wanted else char in _HEX):
            return False
        self._escape = escape
        if len(escape) < 6:
            return True
        unit = int(escape[2:6], 16)
        if len(escape) == 6:
            if 0xD800 <= unit < 0xDC00:
                return True  # its low surrogate must follow
            if 0xDC00 <= unit < 0xE000:
                return False  # a low surrogate alone is not text
            self._escape = ""
            out.append(_encoded(chr(unit)))
            return True
        if len(escape) < 12:
            return True
        low = int(escape[8:12], 16)
        self._escape = ""
        if not 0xDC00 <= low < 0xE000:
            return False
        out.append(_encoded(chr(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))))
        return True
