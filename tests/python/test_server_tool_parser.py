"""tool_choice "auto" on a server started with --enable-auto-tool-choice --tool-call-parser hermes:
the calls the model writes in Hermes/Qwen syntax come back as tool_calls, whole or streamed. The
tiny model writes no calls of its own, so a regex (structured outputs) makes it write them."""

from __future__ import annotations

import json
import re

import openai
import pytest

from kvserve.server.tool_parsers import HermesStream, parse_hermes
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
    content, calls, reasons = "", {}, []
    for chunk in client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=190,
                                                temperature=0, stream=True, extra_body=_written(TWO_CALLS)):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for call in choice.delta.tool_calls or []:
                entry = calls.setdefault(call.index, {"name": "", "arguments": ""})
                entry["name"] += call.function.name or ""
                entry["arguments"] += call.function.arguments or ""
            reasons.append(choice.finish_reason)
    assert content == "Let me check." and reasons[-1] == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        ("get_time", {"zone": "UTC"}), ("get_time", {"zone": "CET"})]


def test_a_reply_without_calls_is_text(client):
    response = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=60,
                                              temperature=0, extra_body=_written("No tools needed."))
    assert response.choices[0].message.content == "No tools needed." and response.choices[0].message.tool_calls is None
    assert response.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("text, content, calls", [
    (TWO_CALLS, "Let me check.", [("get_time", {"zone": "UTC"}), ("get_time", {"zone": "CET"})]),
    ('<tool_call>{"name": "f", "arguments": {}}</tool_call>', None, [("f", {})]),
    ('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}', None, [("f", {"a": 1})]),  # unclosed; arguments as text
    ("plain text < tool_call", "plain text < tool_call", None),
    ('<tool_call>{"name": "f", "argum', '<tool_call>{"name": "f", "argum', None),  # cut short: text
    ('<tool_call>["f"]</tool_call>', '<tool_call>["f"]</tool_call>', None),
    # Whitespace between text and calls is dropped, text around them kept, a bad block kept as text:
    # the same whole and streamed, wherever the pieces are cut.
    (F_CALL + "\nDone.", "Done.", [("f", {})]),
    (F_CALL + " and " + F_CALL, "and", [("f", {}), ("f", {})]),
    (F_CALL + '<tool_call>["f"]</tool_call>', '<tool_call>["f"]</tool_call>', [("f", {})]),
    ('<tool_call>{"name": "f", "arguments": {"x": NaN}}</tool_call>',
     '<tool_call>{"name": "f", "arguments": {"x": NaN}}</tool_call>', None),  # NaN is not JSON
    ('<tool_call>{"name": "f", "arguments": {"x": "\\ud800"}}', '<tool_call>{"name": "f", "arguments": {"x": '
     '"\\ud800"}}', None),  # a lone surrogate is not text
])
def test_hermes_whole_and_streamed_in_any_pieces(text, content, calls):
    whole_content, whole_calls = parse_hermes(text)
    assert whole_content == content
    assert ([(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in whole_calls]
            if whole_calls else None) == calls
    for size in (1, 2, 3, 7, len(text)):
        stream = HermesStream()
        deltas = [d for i in range(0, len(text), size) for d in stream.feed(text[i:i + size])] + stream.finish()
        streamed_content = "".join(d.get("content", "") for d in deltas)
        streamed_calls = [(c["function"]["name"], json.loads(c["function"]["arguments"]))
                          for d in deltas for c in d.get("tool_calls", [])]
        assert streamed_calls == (calls or []), size
        assert streamed_content == (content or "") if calls else streamed_content == text
        assert [c["index"] for d in deltas for c in d.get("tool_calls", [])] == list(range(len(streamed_calls)))
