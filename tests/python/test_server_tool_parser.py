"""tool_choice "auto" on a server started with --enable-auto-tool-choice --tool-call-parser NAME:
the calls the model writes in its syntax come back as tool_calls, whole or streamed. The tiny model
writes no calls of its own, so a regex (structured outputs) makes it write them. Each parser reads
its syntax the same whole and streamed in pieces of any size."""

from __future__ import annotations

import json
import re

import openai
import pytest

from kvserve.server.tool_parsers import call_stream, parse_calls
from server_process import ServerProcess

MODEL = "tiny"
MESSAGES = [{"role": "user", "content": "What time is it?"}]
TOOLS = [{"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string"}}}}}]
F_CALL = '<tool_call>{"name": "f", "arguments": {}}</tool_call>'
TWO_CALLS = ('Let me check.<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>\n'
             '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>')


@pytest.fixture(scope="module")
def client(tiny_model_dir):
    with ServerProcess(tiny_model_dir("LlamaForCausalLM"), "--served-model-name", MODEL, "--enable-auto-tool-choice",
                       "--tool-call-parser", "hermes") as server:
        yield openai.OpenAI(base_url=server.url + "/v1", api_key="unused")


def _written(text: str) -> dict:
    """Request fields that make the tiny model write exactly `text`."""
    return {"structured_outputs": {"regex": re.escape(text)}}


def test_written_calls_come_back_as_tool_calls(client):
    response = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=190,
                                              temperature=0, extra_body=_written(TWO_CALLS))
    [choice] = response.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me check."
    assert [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls] == [
        ("get_time", {"zone": "UTC"}), ("get_time", {"zone": "CET"})]


def test_streamed_calls_equal_the_whole_ones(client):
    content, calls, reasons = _streamed(client, max_tokens=190, temperature=0, extra_body=_written(TWO_CALLS))
    assert content == "Let me check." and reasons[-1] == "tool_calls"
    assert calls == [("get_time", {"zone": "UTC"}), ("get_time", {"zone": "CET"})]


def test_arguments_stream_as_the_model_writes_them(client):
    """Each call's first chunk has its id and name, then its arguments come in pieces, as OpenAI's
    do (the openai client joins them); whole or streamed, the same calls."""
    written = '<tool_call>\n{"name": "get_time", "arguments": {"zone": "Europe/Paris", "format": "24 hour"}}\n</tool_call>'
    fields = dict(model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=190, temperature=0,
                  extra_body=_written(written))
    pieces = [call.function.arguments for chunk in client.chat.completions.create(stream=True, **fields)
              for choice in chunk.choices for call in choice.delta.tool_calls or []]
    assert pieces[0] == "" and len(pieces) > 3
    assert "".join(pieces) == '{"zone":"Europe/Paris","format":"24 hour"}'
    [call] = client.chat.completions.create(**fields).choices[0].message.tool_calls
    assert call.function.arguments == "".join(pieces)
    with client.beta.chat.completions.stream(**fields) as stream:
        done = [event for event in stream if event.type == "tool_calls.function.arguments.done"]
    assert [json.loads(event.arguments) for event in done] == [{"zone": "Europe/Paris", "format": "24 hour"}]


def test_responses_stream_calls_as_items_whose_arguments_grow(client):
    tools = [{"type": "function", **tool["function"]} for tool in TOOLS]
    fields = dict(model=MODEL, input="What time is it?", tools=tools, temperature=0, max_output_tokens=190,
                  extra_body=_written(TWO_CALLS))
    whole = client.responses.create(**fields)
    events = list(client.responses.create(stream=True, **fields))
    deltas = [event for event in events if event.type == "response.function_call_arguments.delta"]
    assert len(deltas) > 4 and {event.output_index for event in deltas} == {1, 2}
    with client.responses.stream(**fields) as stream:
        final = stream.get_final_response()  # the client's accumulator checks every event against the last
    for response in (whole, final):
        assert [item.type for item in response.output] == ["message", "function_call", "function_call"]
        assert [(item.name, json.loads(item.arguments)) for item in response.output[1:]] == [
            ("get_time", {"zone": "UTC"}), ("get_time", {"zone": "CET"})]


def test_a_reply_without_calls_is_text(client):
    response = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=60,
                                              temperature=0, extra_body=_written("No tools needed."))
    assert response.choices[0].message.content == "No tools needed." and response.choices[0].message.tool_calls is None
    assert response.choices[0].finish_reason == "stop"


def _streamed(client, **fields) -> tuple[str, list, list]:
    """(content, [(name, arguments)], finish reasons) of a streamed reply, joined as clients join it."""
    content, calls, reasons = "", {}, []
    for chunk in client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, stream=True, **fields):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for call in choice.delta.tool_calls or []:
                entry = calls.setdefault(call.index, {"name": "", "arguments": ""})
                entry["name"] += call.function.name or ""
                entry["arguments"] += call.function.arguments or ""
            reasons.append(choice.finish_reason)
    return content, [(c["name"], json.loads(c["arguments"])) for c in calls.values()], reasons


def test_llama3_json_calls_whole_and_streamed(tiny_model_dir):
    """Another parser through the same flags: Llama 3's JSON calls (the tokenizer has no <|python_tag|>)."""
    written = '{"name": "get_time", "parameters": {"zone": "UTC"}}; {"name": "get_time", "parameters": {}}'
    fields = dict(max_tokens=150, temperature=0, extra_body=_written(written))
    with ServerProcess(tiny_model_dir("LlamaForCausalLM"), "--served-model-name", MODEL, "--enable-auto-tool-choice",
                       "--tool-call-parser", "llama3_json") as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
        [choice] = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, **fields).choices
        content, calls, reasons = _streamed(client, **fields)
    expected = [("get_time", {"zone": "UTC"}), ("get_time", {})]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls] == expected
    assert (content, calls, reasons[-1]) == ("", expected, "tool_calls")


def _joined(calls: list[dict]) -> list[tuple]:
    """(name, arguments) of each call: parsed where they are JSON, else their text."""
    def arguments(text: str):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return [(c["function"]["name"], arguments(c["function"]["arguments"])) for c in calls]


def _streamed_calls(deltas: list[dict]) -> list[dict]:
    """The calls of streamed deltas, joined as the openai client joins them: a call's first delta
    has its id, type and name, the ones after it more of its arguments."""
    calls: list[dict] = []
    for part in (p for d in deltas for p in d.get("tool_calls", [])):
        if part["index"] == len(calls):
            assert part["id"].startswith("call_") and part["type"] == "function" and part["function"]["name"]
            calls.append({"function": dict(part["function"])})
        else:
            assert part["index"] == len(calls) - 1 and set(part) == {"index", "function"}
            assert set(part["function"]) == {"arguments"} and part["function"]["arguments"]
            calls[-1]["function"]["arguments"] += part["function"]["arguments"]
    return calls


def _read(parser: str, text: str, content: str | None, calls: list | None) -> None:
    """`text` read whole gives (content, calls), and streamed in pieces of any size the same."""
    whole_content, whole_calls = parse_calls(parser, text)
    assert whole_content == content
    assert (_joined(whole_calls) if whole_calls else None) == calls
    for size in (1, 2, 3, 7, len(text)):
        stream = call_stream(parser)
        deltas = [d for i in range(0, len(text), size) for d in stream.feed(text[i:i + size])] + stream.finish()
        streamed_content = "".join(d.get("content", "") for d in deltas)
        assert _joined(_streamed_calls(deltas)) == (calls or []), size
        assert streamed_content == (content or "") if calls else streamed_content == text


@pytest.mark.parametrize("text, content, calls", [
    (TWO_CALLS, "Let me check.", [("get_time", {"zone": "UTC"}), ("get_time", {"zone": "CET"})]),
    ('<tool_call>{"name": "f", "arguments": {}}</tool_call>', None, [("f", {})]),
    ('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}', None, [("f", {"a": 1})]),  # unclosed; arguments as text
    ("plain text < tool_call", "plain text < tool_call", None),
    ('<tool_call>{"name": "f", "argum', '<tool_call>{"name": "f", "argum', None),  # cut short: text
    ('<tool_call>["f"]</tool_call>', '<tool_call>["f"]</tool_call>', None),
    ('<tool_call>{"name": 3, "arguments": {}}</tool_call>', '<tool_call>{"name": 3, "arguments": {}}</tool_call>',
     None),  # a name is a string
    ('<tool_call>{"name": "f", "arguments": [1]}</tool_call>', '<tool_call>{"name": "f", "arguments": [1]}</tool_call>',
     None),  # arguments are an object
    # Whitespace between text and calls is dropped, text around them kept, a bad block kept as text:
    # the same whole and streamed, wherever the pieces are cut.
    (F_CALL + "\nDone.", "Done.", [("f", {})]),
    (F_CALL + " and " + F_CALL, "and", [("f", {}), ("f", {})]),
    (F_CALL + '<tool_call>["f"]</tool_call>', '<tool_call>["f"]</tool_call>', [("f", {})]),
    # A call opens at the bracket of its arguments, written after its name: from there it is a call
    # whatever follows, its arguments as far as they are JSON (NaN is not; a lone surrogate is not text).
    ('<tool_call>{"name": "f", "arguments": {"x": NaN}}</tool_call>', None, [("f", '{"x":')]),
    ('<tool_call>{"name": "f", "arguments": {"x": "\\ud800"}}', None, [("f", '{"x":"')]),
    ('<tool_call>{"name": "f", "arguments": {"x": 1', None, [("f", '{"x":')]),  # cut short
    ('<tool_call>{"arguments": {"x": NaN}, "name": "f"}</tool_call>',
     '<tool_call>{"arguments": {"x": NaN}, "name": "f"}</tool_call>', None),  # arguments first: read whole
])
def test_hermes_whole_and_streamed_in_any_pieces(text, content, calls):
    _read("hermes", text, content, calls)


LLAMA_CALL = '{"name": "get_time", "parameters": {"zone": "UTC"}}'


@pytest.mark.parametrize("text, content, calls", [
    (LLAMA_CALL, None, [("get_time", {"zone": "UTC"})]),
    ("<|python_tag|>" + LLAMA_CALL, None, [("get_time", {"zone": "UTC"})]),
    ('\n {"name": "f", "arguments": {"s": "}{;"}} ; {"name": "g", "parameters": {}};', None,
     [("f", {"s": "}{;"}), ("g", {})]),  # braces and ";" inside strings; "arguments" for "parameters"
    (LLAMA_CALL + "\n\nThat is the call.", "That is the call.", [("get_time", {"zone": "UTC"})]),
    (LLAMA_CALL + '; {"name": 1}', '{"name": 1}', [("get_time", {"zone": "UTC"})]),  # a later object, text
    ('{"answer": 42}', '{"answer": 42}', None),  # JSON that is not a call: the reply is text
    ("It is noon. " + LLAMA_CALL, "It is noon. " + LLAMA_CALL, None),  # calls open the reply, or follow the tag
    ("Let me check.<|python_tag|>" + LLAMA_CALL + "; " + LLAMA_CALL, "Let me check.",
     [("get_time", {"zone": "UTC"})] * 2),
    ("See <|python_tag|>{not json}", "See <|python_tag|>{not json}", None),
    ("See <|python_tag|> later", "See <|python_tag|> later", None),
    ("See <|python_ta", "See <|python_ta", None),
    ('<|python_tag|>{"name": "f", "parameters": {', None, [("f", "{")]),  # cut short, once the call opened
    ('<|python_tag|>{"name": "f", "param', '<|python_tag|>{"name": "f", "param', None),  # cut short before
    ("<|python", "<|python", None),
    ("  ", "  ", None),
])
def test_llama3_json_whole_and_streamed_in_any_pieces(text, content, calls):
    _read("llama3_json", text, content, calls)


@pytest.mark.parametrize("text, content, calls", [
    ('[get_time(zone="UTC"), get_weather(city=\'Paris ]\', days=3, hourly=False, at=None, temps=(1.5, -2), '
     'extra={"k": [1]})]', None, [("get_time", {"zone": "UTC"}), ("get_weather", {
         "city": "Paris ]", "days": 3, "hourly": False, "at": None, "temps": [1.5, -2], "extra": {"k": [1]}})]),
    ("<|python_start|>[f()]<|python_end|>", None, [("f", {})]),
    ("[f(x=1)]\nDone.", "Done.", [("f", {"x": 1})]),
    ('[f(s=\'\'\'it\'s (1), "x"\'\'\'), g(n=-1.5e3, t=(1, [2]), d={"a": None},)]', None,
     [("f", {"s": 'it\'s (1), "x"'}), ("g", {"n": -1500.0, "t": [1, [2]], "d": {"a": None}})]),
    # A call opens at its "(": from there it is a call, its arguments as far as they read as keywords
    # of literals; the rest of the list is dropped, text after it kept.
    ("[f(1)]", None, [("f", "")]),  # positional arguments name nothing
    ("[f(x=g())]", None, [("f", '{"x":')]),  # not a literal
    ("[f(x=float('nan'))]", None, [("f", '{"x":')]),
    ("[f(**kw)]", None, [("f", "")]),
    ("[f(x=1, y==2), g()] Done.", "Done.", [("f", '{"x":1')]),
    ("[f(x=1), 42, g()] Done.", "Done.", [("f", {"x": 1})]),
    ("[f(x=1)", None, [("f", {"x": 1})]),  # cut short after the call
    ('[f(code="""def g():\n    return', None, [("f", '{"code":"def g():\\n    return')]),  # cut short in a string
    # Strings as Python reads them: escapes, triple quotes, raw, adjacent literals joined.
    ('[f(s="tab\\t\\x41\\u00e9\\N{EM DASH}\\101\\q", t=r"\\d+\\"", u="""a "b"\nc""" \'d\' u"e")]', None,
     [("f", {"s": "tab\tA\u00e9\u2014A\\q", "t": '\\d+\\"', "u": 'a "b"\nc' + "de"})]),
    ('[f(s="a\nb")]', None, [("f", '{"s":"a')]),  # a line break ends a one-quote literal: Python refuses it
    ('[f(s="a" + "b")]', None, [("f", '{"s":"a')]),  # not a literal
    ('[f(s=b"a")]', None, [("f", '{"s":')]),  # bytes are not text
    ("[1, 2]", "[1, 2]", None),
    ("[]", "[]", None),
    ("[f", "[f", None),  # cut short before the call opened
    ("Call [f()]", "Call [f()]", None),
])
def test_pythonic_whole_and_streamed_in_any_pieces(text, content, calls):
    _read("pythonic", text, content, calls)


def test_pythonic_arguments_stream_as_they_complete():
    """A call opens at its "(", each keyword goes out once its "=" is read (and is no "=="), a
    string's text as it comes, any other value once the "," or ")" after it is."""
    stream = call_stream("pythonic")

    def arguments(piece: str) -> list[str]:
        return [d["tool_calls"][0]["function"]["arguments"] for d in stream.feed(piece)]

    assert stream.feed("[get_weather") == []
    [opened] = stream.feed("(ci")
    assert opened["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": ""}
    assert arguments('ty="Par') == ['{"city":', '"', "Par"]
    assert arguments('is\\') == ["is"]  # an escape cut short waits
    assert arguments('n", days=') == ["\\n", '"']
    assert arguments("3") == [',"days":']  # 3 or 30
    assert arguments("0)") == ["30", "}"]
    assert stream.feed("]") + stream.finish() == []


@pytest.mark.parametrize("text, content, calls", [
    ('[TOOL_CALLS] [{"name": "get_time", "arguments": {"zone": "UTC"}}, {"name": "f", "arguments": {}}]', None,
     [("get_time", {"zone": "UTC"}), ("f", {})]),
    ('Checking.[TOOL_CALLS]get_time[ARGS]{"zone": "UTC"}[TOOL_CALLS]f[CALL_ID]a1b2c3d4e[ARGS]{}', "Checking.",
     [("get_time", {"zone": "UTC"}), ("f", {})]),
    ('[TOOL_CALLS]get_time{"zone": "[TOOL_CALLS]"}', None, [("get_time", {"zone": "[TOOL_CALLS]"})]),
    ("[TOOL_CALLS] nothing", "[TOOL_CALLS] nothing", None),
    ('A [TOOL_CALLS][{"name": 3}] b', 'A [TOOL_CALLS][{"name": 3}] b', None),
    ('[TOOL_CALLS]f[ARGS]{"x": 1', None, [("f", '{"x":')]),  # cut short, once the call opened
    ('[TOOL_CALLS][{"name": "f", "arguments": {}}, {"name": "g", "arguments": {"y": [', None,
     [("f", {}), ("g", '{"y":[')]),
    ('[TOOL_CALLS][{"name": "f", "arguments": {}}, {"name": 3}] Done.', "Done.", [("f", {})]),
    ('[TOOL_CALLS][{"arguments": {"x": 1}, "name": "f"}, {"name": "g", "arguments": "{}"}]', None,
     [("f", {"x": 1}), ("g", {})]),  # not name first, or arguments as a string: each call whole
    ('[TOOL_CALLS]f[ARGS]{"x": NaN} after', "after", [("f", '{"x":')]),
    ('[TOOL_CALLS]f[ARGS', '[TOOL_CALLS]f[ARGS', None),  # cut short before
    ("no calls [TOOL", "no calls [TOOL", None),
])
def test_mistral_whole_and_streamed_in_any_pieces(text, content, calls):
    _read("mistral", text, content, calls)
