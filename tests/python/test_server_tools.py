"""Tool calls in chat completions where the request forces one (tool_choice a named function, or
"required"): the reply is held to the call's JSON and comes back as OpenAI's tool_calls, through the
`openai` client, streamed or not; the choices kvserve does not answer are 400s naming tool_choice."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from kvserve import SamplingParams, StructuredOutputsParams

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


def test_a_streamed_call_equals_the_whole_one(tiny_client):
    whole = tiny_client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice=NAMED,
                                                **GREEDY).choices[0].message.tool_calls[0]
    name, arguments, reasons = None, "", []
    for chunk in tiny_client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice=NAMED,
                                                     stream=True, **GREEDY):
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                name = call.function.name or name
                arguments += call.function.arguments or ""
            reasons.append(choice.finish_reason)
    assert name == "get_weather" and arguments == whole.function.arguments and reasons[-1] == "stop"


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
        for reply in response.choices:
            if reply.message.tool_calls:
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
