"""Tool calls in chat completions where the request forces one (tool_choice a named function, or
"required"): the reply is held to the call's JSON and comes back as OpenAI's tool_calls, through the
`openai` client, streamed or not; the choices kvserve does not answer are 400s naming tool_choice."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from kvserve import SamplingParams, StructuredOutputsParams
from kvserve.server.protocol import ChatCompletionRequest
from kvserve.server.tools import ForcedCallReply

MODEL = "tiny"
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}, "celsius": {"type": "boolean"}},
           "required": ["city", "celsius"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"],
        "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": TIME}}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}
GREEDY = dict(temperature=0, max_tokens=64)


def test_a_named_function_is_called_with_the_offline_engines_arguments(tiny_client, tiny_engine):
    response = tiny_client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice=NAMED,
                                                   **GREEDY)
    [choice] = response.choices
    assert choice.finish_reason == "stop" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    [offline] = tiny_engine.chat(MESSAGES, SamplingParams(**GREEDY, structured_outputs=StructuredOutputsParams(
        json=WEATHER, disable_any_whitespace=True)), chat_template_kwargs={"tools": TOOLS}, use_tqdm=False)
    assert json.loads(call.function.arguments) == json.loads(offline.outputs[0].text)
    assert set(json.loads(call.function.arguments)) == {"city", "celsius"}


def test_required_calls_one_of_the_tools(tiny_client):
    response = tiny_client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="required",
                                                   parallel_tool_calls=False, temperature=1.0, seed=2, n=4,
                                                   max_tokens=96)
    for choice in response.choices:
        assert choice.finish_reason == "tool_calls", choice
        [call] = choice.message.tool_calls
        arguments = json.loads(call.function.arguments)
        assert (call.function.name, set(arguments)) in (("get_weather", {"city", "celsius"}), ("get_time", {"zone"}))


@pytest.mark.parametrize("choice, max_tokens", [(NAMED, 64), (NAMED, 6), ("required", 96), ("required", 30)])
def test_a_streamed_call_equals_the_whole_one(tiny_client, choice, max_tokens):
    """Its arguments come in pieces as the model writes them; a reply cut short is a call whose
    arguments stop where it did (as vLLM's), the same whole and streamed."""
    fields = dict(model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice=choice, parallel_tool_calls=False,
                  temperature=0, max_tokens=max_tokens)
    whole = tiny_client.chat.completions.create(**fields).choices[0]
    [call] = whole.message.tool_calls
    names, pieces, reasons = [], [], []
    for chunk in tiny_client.chat.completions.create(stream=True, **fields):
        for streamed in chunk.choices:
            for part in streamed.delta.tool_calls or []:
                names += [part.function.name] if part.function.name else []
                pieces.append(part.function.arguments)
            reasons.append(streamed.finish_reason)
    assert names == [call.function.name] and "".join(pieces) == call.function.arguments
    assert len(pieces) > (3 if max_tokens > 30 else 1) and reasons[-1] == whole.finish_reason
    if max_tokens > 30:
        assert whole.finish_reason == ("stop" if choice == NAMED else "tool_calls")
        json.loads(call.function.arguments)
    else:
        assert whole.finish_reason == "length"
        with pytest.raises(ValueError):
            json.loads(call.function.arguments)


@pytest.mark.parametrize("choice, text, calls", [
    (NAMED, '{"city":"Paris","celsius":true}', [("get_weather", '{"city":"Paris","celsius":true}')]),
    (NAMED, '{"city":"Pa', [("get_weather", '{"city":"Pa')]),  # cut short
    ("required", '[{"name":"get_time","parameters":{"zone":"UTC"}},{"name":"get_weather","parameters":{}}]',
     [("get_time", '{"zone":"UTC"}'), ("get_weather", "{}")]),
    ("required", '[{"name":"get_time","parameters":{"zo', [("get_time", '{"zo')]),  # cut short
    ("required", '[{"name":"get_ti', None),  # cut before a call opened: text
])
def test_forced_replies_read_the_same_whole_and_in_pieces(choice, text, calls):
    tool_choice = ChatCompletionRequest(model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice=choice).tool_choice
    message, _ = ForcedCallReply(tool_choice).message(text, "length")
    assert ([(c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]]
            if "tool_calls" in message else message["content"]) == (calls if calls else text)
    for size in (1, 4, len(text)):
        reply = ForcedCallReply(tool_choice)
        deltas = [d for i in range(0, len(text), size) for d in reply.feed(text[i:i + size])] + reply.finish("length")[0]
        joined: list[list[str]] = []
        for part in (p for d in deltas for p in d.get("tool_calls", [])):
            if "id" in part:
                joined.append([part["function"]["name"], ""])
            joined[part["index"]][1] += part["function"]["arguments"]
        assert ([tuple(c) for c in joined] if joined else "".join(d.get("content", "") for d in deltas)) == (
            calls if calls else text), size


def test_none_answers_in_text(tiny_client):
    response = tiny_client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="none",
                                                   **GREEDY)
    assert response.choices[0].message.tool_calls is None and response.choices[0].message.content


def test_earlier_calls_in_the_conversation_are_accepted(tiny_client):
    conversation = MESSAGES + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris", "celsius": true}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees"}]
    response = tiny_client.chat.completions.create(model=MODEL, messages=conversation, tools=TOOLS,
                                                   tool_choice="none", max_tokens=4)
    assert response.choices[0].finish_reason in ("length", "stop")


@pytest.mark.parametrize("body, message", [
    ({"tools": TOOLS}, "'auto'"),
    ({"tools": TOOLS, "tool_choice": "auto"}, "--enable-auto-tool-choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "fly"}}}, "not among the tools"),
    ({"tool_choice": "required"}, "needs tools"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "give one of them"),
])
def test_choices_kvserve_does_not_answer_are_400s(tiny_server, body, message):
    response = httpx.post(f"{tiny_server.url}/v1/chat/completions",
                          json={"model": MODEL, "messages": MESSAGES, **body}, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert message in error["message"]
    assert error["param"] in ("tool_choice", None)


def test_required_of_an_empty_tools_list_answers_in_text(tiny_client):
    response = tiny_client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=[], tool_choice="required",
                                                   **GREEDY)
    assert response.choices[0].message.tool_calls is None and response.choices[0].message.content


def test_the_openai_client_raises_for_auto(tiny_client):
    with pytest.raises(openai.BadRequestError, match="tool_choice"):
        tiny_client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS)


def test_the_tools_reach_the_chat_template(tiny_engine):
    from kvserve.server.protocol import ChatCompletionRequest
    from kvserve.server.served_model import ServedModel

    served = ServedModel(tiny_engine, ["tiny"], "tiny", trust_request_chat_template=True)
    conversation = MESSAGES + [
        {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_time", "arguments": '{"zone": "UTC"}'}}]}]
    body = ChatCompletionRequest.model_validate({
        "messages": conversation, "tools": TOOLS, "tool_choice": "required",
        "chat_template": "{% for t in tools %}{{ t.function.name }};{% endfor %}"
                         "{% for m in messages %}{% for c in m.tool_calls or [] %}"
                         "{{ c.function.arguments.zone }}{% endfor %}{% endfor %}"})
    assert served.render_chat(body) == "get_weather;get_time;UTC"


def test_numbers_in_arguments_stay_json_as_written(tiny_client):
    """A float would make 1e999 Infinity, which is not JSON: arguments keep the model's text."""
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}}}]
    for choice in ({"type": "function", "function": {"name": "f"}}, "required"):
        response = tiny_client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=tools, tool_choice=choice,
                                                       parallel_tool_calls=False, temperature=1.0, seed=0, n=6,
                                                       max_tokens=40)
        whole = [reply for reply in response.choices if reply.finish_reason != "length"]  # a cut call stops short
        assert whole
        for reply in whole:
            arguments = reply.message.tool_calls[0].function.arguments
            assert "Infinity" not in arguments and "NaN" not in arguments
            json.loads(arguments, parse_constant=lambda name: pytest.fail(f"{name} in {arguments}"))


def test_required_takes_schemas_with_their_own_definitions(tiny_client):
    """openai.pydantic_function_tool writes nested models as $defs; under "required" each tool's
    schema sits inside the call array, so its references are rebased."""
    place = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"],
             "additionalProperties": False}
    tools = [{"type": "function", "function": {"name": "trip", "parameters": {
        "$defs": {"Place": place}, "type": "object", "properties": {"to": {"$ref": "#/$defs/Place"}},
        "required": ["to"], "additionalProperties": False}}}]
    response = tiny_client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=tools, tool_choice="required",
                                                   parallel_tool_calls=False, temperature=0, max_tokens=60)
    [call] = response.choices[0].message.tool_calls
    assert json.loads(call.function.arguments)["to"]["city"] in ("Paris", "Rome")


def test_the_openai_stream_helper_closes_each_call(tiny_client):
    events = []
    with tiny_client.beta.chat.completions.stream(model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice=NAMED,
                                                  **GREEDY) as stream:
        for event in stream:
            events.append(event.type)
    assert "tool_calls.function.arguments.done" in events


def test_arguments_hold_only_the_parameters_the_function_lists(tiny_client):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 4}}, "required": ["city"]}}}]
    for choice in ({"type": "function", "function": {"name": "f"}}, "required"):
        response = tiny_client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=tools, tool_choice=choice,
                                                       parallel_tool_calls=False, temperature=1.0, seed=1, n=8,
                                                       max_tokens=60)
        calls = [reply.message.tool_calls[0] for reply in response.choices if reply.message.tool_calls]
        assert len(calls) >= 6
        assert all(set(json.loads(call.function.arguments)) == {"city"} for call in calls), calls
