"""The pythonic parser on random replies: lists of calls whose arguments are Python literals of
every kind of string (quotes single and tripled, u and r prefixes, escapes, adjacent literals)
read as Python reads them; and any text, valid or not, read the same whole and streamed in pieces
of any size, its arguments always UTF-8."""

from __future__ import annotations

import ast
import json
import random
import warnings

from kvserve.server.tool_parsers import call_stream, parse_calls
from test_server_tool_parser import _streamed_calls

BODY = ["a", " ", '"', "'", "\\n", "\\t", "\\\\", "\\x41", "\\u00e9", "\\N{EM DASH}", "\\101", "\\7", "\n", "\u00e9", "(",
        ")", ",", "]", "[", "\\\n", "\\q"]
PIECES = ["[", "]", "(", ")", "f", "get_x", "=", "==", ",", " ", '"a"', "'b'", '"""t"x"""', "'''", '"""', '"', "'", "1",
          "-2.5", "None", "{", "}", '"k":', "\\", "\\x4", "\\x41", "\\u00e", "\\N{EM DASH}", "\\N{", "\\1", "\\12", "\\n",
          "r", "u", "b", "x", "y", "<|python_start|>", "<|python_end|>", "\n", "\\\n", "**kw", "g()", "+", "\ud800",
          "\\ud800", "\u00e9"]


def _python(source: str):
    """Python's own reading of a literal, or of a list's syntax tree, as it reads by default (an
    unknown escape kept as written, its warning not shown)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ast.parse(source, mode="eval").body if source.startswith("[") else ast.literal_eval(source)


def _string(rng: random.Random) -> str:
    """A Python string literal; where the random one is not valid, its body's repr."""
    quote, prefix = rng.choice(['"', "'", '"""', "'''"]), rng.choice(["", "", "u", "r"])
    body = "".join(rng.choice(BODY) for _ in range(rng.randint(0, 8)))
    try:
        _python(prefix + quote + body + quote)
        return prefix + quote + body + quote
    except (SyntaxError, ValueError):
        return repr(body)


def _value(rng: random.Random, depth: int = 0) -> str:
    kind = rng.random()
    if kind < 0.5 or depth > 1:
        joined = rng.choice([" ", "\\\n", ""]) + _string(rng) if rng.random() < 0.2 else ""
        return _string(rng) + joined
    if kind < 0.7:
        return rng.choice(["1", "-2.5", "None", "True", "1e3", "0x1F"])
    if kind < 0.85:
        return "[" + ", ".join(_value(rng, depth + 1) for _ in range(rng.randint(0, 3))) + "]"
    return "{" + ", ".join(f"{_string(rng)}: {_value(rng, depth + 1)}" for _ in range(rng.randint(0, 2))) + "}"


def _read_in_pieces(text: str, content: str | None, calls: list[dict] | None) -> None:
    for size in (1, 2, 3, 7):
        stream = call_stream("pythonic")
        deltas = [d for i in range(0, len(text), size) for d in stream.feed(text[i:i + size])] + stream.finish()
        streamed = [(c["function"]["name"], c["function"]["arguments"]) for c in _streamed_calls(deltas)]
        assert streamed == [(c["function"]["name"], c["function"]["arguments"]) for c in calls or []], (text, size)
        for _, arguments in streamed:
            arguments.encode("utf-8")  # UnicodeEncodeError for a lone surrogate
        streamed_content = "".join(d.get("content", "") for d in deltas)
        assert streamed_content == (content or "" if calls else text), (text, size)


def test_lists_of_calls_read_as_python_reads_them():
    rng = random.Random(0)
    checked = 0
    while checked < 600:
        calls = [rng.choice(["f", "get_time"]) + "(" + ", ".join(f"{rng.choice('abxyz')}{i}={_value(rng)}"
                                                                 for i in range(rng.randint(0, 3))) + ")"
                 for _ in range(rng.randint(1, 3))]
        text = "[" + ", ".join(calls) + "]"
        try:
            python = [(c.func.id, {k.arg: ast.literal_eval(k.value) for k in c.keywords}) for c in _python(text).elts]
            json.dumps(python, ensure_ascii=False).encode("utf-8")
        except (SyntaxError, ValueError):
            continue  # not what a model may write: bytes, lone surrogates
        content, read = parse_calls("pythonic", text)
        assert content is None
        assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in read] == \
            [(name, json.loads(json.dumps(arguments))) for name, arguments in python], text
        _read_in_pieces(text, content, read)
        checked += 1


def test_any_text_reads_the_same_whole_and_streamed():
    rng = random.Random(1)
    for _ in range(3000):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 16)))
        text = rng.choice(["[f(s=", '[f(s="', ""]) + text
        content, calls = parse_calls("pythonic", text)
        _read_in_pieces(text, content, calls)
