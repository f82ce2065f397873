"""CompactStream, the reader a call's arguments stream through: fed a JSON object in pieces of any
size, it writes what compact_json writes for the whole, and stops where the text stops being JSON."""

from __future__ import annotations

import json
import random

import pytest

from kvserve.server.tool_parsers.call_json import compact_json, loads_exact
from kvserve.server.tool_parsers.compact_stream import CompactStream

STRINGS = ["", "Paris", 'say "hi"', "back\\slash", "tab\there\nnewline", "\u00e9\u4e2d\U0001F600", "\x01\x1f", "a/b"]


def _value(rng: random.Random, depth: int):
    kind = rng.choice(["object", "array"] if depth == 0 else ["object", "array", "string", "number", "literal"])
    if kind == "object" and depth < 3:
        return {rng.choice(STRINGS) + str(i): _value(rng, depth + 1) for i in range(rng.randint(0, 3))}
    if kind == "array" and depth < 3:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == "number":
        return rng.choice([0, -7, 12345678901234567890, 2.5, -0.125, 1e-30, 6.02e23])
    if kind == "literal":
        return rng.choice([True, False, None])
    return rng.choice(STRINGS)


def _written(rng: random.Random, value) -> str:
    """`value` as a model may write it: spaced or not, characters escaped or not."""
    text = json.dumps(value, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 2]))
    return text.replace("/", "\\/") if rng.random() < 0.5 else text


def _fed(text: str, sizes: list[int]) -> tuple[str, CompactStream]:
    stream, out, i = CompactStream(), [], 0
    while i < len(text):
        size = sizes[len(out) % len(sizes)]
        out.append(stream.feed(text[i:i + size]))
        i += size
    return "".join(out), stream


@pytest.mark.parametrize("seed", range(40))
def test_random_values_in_random_pieces_come_out_as_compact_json_writes_them(seed):
    rng = random.Random(seed)
    value = _value(rng, 0)
    text = _written(rng, value)
    sizes = [rng.randint(1, 6) for _ in range(5)]
    out, stream = _fed(text + " trailing", sizes)
    assert out == compact_json(loads_exact(text)) and stream.end == len(text) and not stream.failed


@pytest.mark.parametrize("text, written", [
    ('{"x": NaN}', '{"x":'),
    ('{"x": 01}', '{"x":'),
    ('{"x": 1.}', '{"x":'),
    ('{"x": tru}', '{"x":'),
    ('{"x": "\\ud800"}', '{"x":"'),  # a lone surrogate is not text
    ('{"x": "\\udc00"}', '{"x":"'),
    ('{"x": "\\ud83d\\u0041"}', '{"x":"'),  # a high surrogate must have a low one after it
    ('{"x": "a\tb"}', '{"x":"a'),  # a control character only as an escape
    ('{"x": "\\q"}', '{"x":"'),
    ('{"x" 1}', '{"x"'),
    ('{"x": 1,}', '{"x":1,'),
    ('{"x": 1]', '{"x":1'),
    ('[1 2]', '[1'),
])
def test_it_stops_where_the_text_stops_being_json(text, written):
    for size in (1, 3, len(text)):
        out, stream = _fed(text, [size])
        assert (out, stream.failed, stream.end) == (written, True, None), size
        with pytest.raises(ValueError):
            compact_json(loads_exact(text))


def test_it_reads_an_object_or_an_array_nothing_else():
    stream = CompactStream()
    assert stream.feed('"text"') == "" and stream.failed


def test_a_string_goes_out_as_it_comes_but_for_an_escape_not_yet_whole():
    stream = CompactStream()
    assert stream.feed('{"code": "def f') == '{"code":"def f'
    assert stream.feed("():\\") == "():"
    assert stream.feed("n  return \\ud83d") == "\\n  return "
    assert stream.feed("\\ude00 1") == "\U0001F600 1"
    assert stream.feed('"}') == '"}' and stream.end == len('{"code": "def f():\\n  return \\ud83d\\ude00 1"}')
    # A number waits for the character that ends it.
    stream = CompactStream()
    assert stream.feed('{"n": 12') == '{"n":' and stream.feed("3") == "" and stream.feed(" }") == "123}"
