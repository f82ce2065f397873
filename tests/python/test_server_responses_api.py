"""OpenAI's Responses API (POST /v1/responses) through the real openai client: the same answers as
chat completions of the same conversation, whole or streamed (the client's own stream accumulator
reads the events), structured outputs through text.format, function calls as output items; what
kvserve does not take is a 400 naming it."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

MODEL = "tiny"
GREEDY = dict(temperature=0, max_output_tokens=12)
WEATHER = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"],
           "additionalProperties": False}
TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather in a city", "parameters": WEATHER}]


def _chat(client, messages, **fields):
    return client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_completion_tokens=12,
                                          **fields)


def test_a_response_is_the_chat_completion_of_its_conversation(tiny_client):
    response = tiny_client.responses.create(model=MODEL, instructions="Be brief.", input=[
        {"role": "user", "content": [{"type": "input_text", "text": "What is the weather"}, {"type": "input_text",
                                                                                             "text": " in Paris?"}]}],
        **GREEDY)
    chat = _chat(tiny_client, [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": [{"type": "text", "text": "What is the weather"},
                                                            {"type": "text", "text": " in Paris?"}]}])
    [item] = response.output
    assert item.type == "message" and item.role == "assistant" and response.model == MODEL
    assert response.output_text == chat.choices[0].message.content and response.output_text
    assert response.status == ("incomplete" if chat.choices[0].finish_reason == "length" else "completed")
    assert (response.usage.input_tokens, response.usage.output_tokens) == (chat.usage.prompt_tokens,
                                                                           chat.usage.completion_tokens)


def test_streamed_events_build_the_same_response(tiny_client):
    # A reply that ends (a regex that stops), as the client's stream helper wants response.completed.
    fields = dict(model=MODEL, input="Tell me about Rome.", temperature=0, max_output_tokens=150,
                  extra_body={"structured_outputs": {"regex": "[a-z]{1,8}( [a-z]{1,8}){2}[.]"}})
    whole = tiny_client.responses.create(**fields)
    assert whole.status == "completed"
    events = list(tiny_client.responses.create(stream=True, **fields))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events[:4]] == ["response.created", "response.in_progress", "response.output_item.added",
                                           "response.content_part.added"]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == whole.output_text
    assert events[-1].type == "response.completed" and events[-1].response.output_text == whole.output_text
    with tiny_client.responses.stream(**fields) as stream:
        final = stream.get_final_response()  # the client's accumulator checks every event against the last
    assert final.output_text == whole.output_text


def test_include_logprobs_gives_the_chat_completions_logprobs(tiny_client):
    """include ["message.output_text.logprobs"]: each token's, with top_logprobs likeliest, as chat
    completions gives them for the same conversation; streamed, the text deltas carry them."""
    fields = dict(model=MODEL, input="Tell me about Rome.", include=["message.output_text.logprobs"],
                  top_logprobs=3, **GREEDY)
    whole = tiny_client.responses.create(**fields)
    chat = _chat(tiny_client, [{"role": "user", "content": "Tell me about Rome."}], logprobs=True, top_logprobs=3)
    [part] = whole.output[0].content
    expected = [entry.model_dump() for entry in chat.choices[0].logprobs.content]
    assert [entry.model_dump() for entry in part.logprobs] == expected and len(expected) == 12
    assert all(len(entry["top_logprobs"]) == 3 for entry in expected) and whole.top_logprobs == 3
    events = list(tiny_client.responses.create(stream=True, **fields))
    deltas = [entry.model_dump() for event in events if event.type == "response.output_text.delta"
              for entry in event.logprobs]
    [done] = [event for event in events if event.type == "response.output_text.done"]
    assert deltas == [entry.model_dump() for entry in done.logprobs] == expected
    assert [entry.model_dump() for entry in events[-1].response.output[0].content[0].logprobs] == expected
    plain = tiny_client.responses.create(model=MODEL, input="Tell me about Rome.", top_logprobs=3, **GREEDY)
    assert plain.output[0].content[0].logprobs == []  # not included


def test_a_reply_cut_by_max_output_tokens_is_incomplete(tiny_client):
    response = tiny_client.responses.create(model=MODEL, input="Hi", max_output_tokens=3, extra_body={"ignore_eos": True})
    events = list(tiny_client.responses.create(model=MODEL, input="Hi", max_output_tokens=3, stream=True,
                                               extra_body={"ignore_eos": True}))
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert events[-1].type == "response.incomplete" and events[-1].response.usage.output_tokens == 3


def test_text_format_holds_the_reply_to_a_schema(tiny_client):
    response = tiny_client.responses.create(model=MODEL, input="Which city?", temperature=0, max_output_tokens=150,
                                            text={"format": {"type": "json_schema", "name": "city",
                                                             "schema": WEATHER, "strict": True}})
    assert response.status == "completed"
    assert json.loads(response.output_text)["city"] in ("Paris", "Rome")


@pytest.mark.parametrize("stream", [False, True])
def test_a_forced_function_call_is_an_output_item(tiny_client, stream):
    fields = dict(model=MODEL, input="Weather in Paris?", tools=TOOLS, tool_choice="required",
                  parallel_tool_calls=False, temperature=0, max_output_tokens=150)
    if stream:
        with tiny_client.responses.stream(**fields) as events:
            response = events.get_final_response()
    else:
        response = tiny_client.responses.create(**fields)
    [call] = response.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id.startswith("call_")
    assert json.loads(call.arguments)["city"] in ("Paris", "Rome")
    # The call and its output go back as input items, as a client runs the tool.
    after = tiny_client.responses.create(model=MODEL, tools=TOOLS, tool_choice="none", max_output_tokens=4, input=[
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "21 degrees"}])
    assert after.output[0].type == "message"


def test_a_stored_response_carries_its_conversation_on(tiny_client, tiny_server):
    first = tiny_client.responses.create(model=MODEL, instructions="Be brief.", input="Hi", **GREEDY)
    second = tiny_client.responses.create(model=MODEL, previous_response_id=first.id, input="And then?", **GREEDY)
    # Instructions are not carried over (OpenAI's rule): the second turn runs without them.
    chat = _chat(tiny_client, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": first.output_text},
                               {"role": "user", "content": "And then?"}])
    assert first.store and second.previous_response_id == first.id
    assert second.output_text == chat.choices[0].message.content
    streamed = list(tiny_client.responses.create(model=MODEL, input="Hi", stream=True, **GREEDY))[-1].response
    for kept in (first, second, streamed):
        assert tiny_client.responses.retrieve(kept.id).output_text == kept.output_text
    tiny_client.responses.delete(first.id)
    unstored = tiny_client.responses.create(model=MODEL, input="Hi", store=False, **GREEDY)
    for gone in (first.id, unstored.id):
        with pytest.raises(openai.NotFoundError):
            tiny_client.responses.retrieve(gone)
    missing = httpx.post(tiny_server.url + "/v1/responses", json={"model": MODEL, "input": "Hi",
                                                                  "previous_response_id": first.id})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "previous_response_id"
    assert not unstored.store


@pytest.mark.parametrize("fields, param, message", [
    ({"background": True}, "background", "in the background"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input",
     "input[0].content[0] is of type 'input_image'"),
    ({"input": [{"type": "web_search_call", "id": "x"}]}, "input", "input[0] is of type 'web_search_call'"),
    ({"tools": [{"type": "web_search"}]}, "tools", "kvserve runs function tools only"),
    ({"max_output_tokens": 1000}, "max_output_tokens", "max_output_tokens is 1000, but this model's maximum context"),
    ({"n": 2}, "n", "n is a chat completions field"),
    ({"logprobs": True}, "logprobs", "logprobs is a chat completions field"),
    ({"top_logprobs": 10**6, "include": ["message.output_text.logprobs"]}, "top_logprobs", "(--max-logprobs)"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text", "needs its schema"),
    ({"text": {"format": {"type": "yaml"}}}, "text", "text.type"),
    ({"tool_choice": "bogus", "tools": TOOLS}, "tool_choice", "tool_choice"),
    ({"cache_salt": ""}, "cache_salt", "cache_salt"),
    ({"input": [{"type": "function_call", "call_id": "c", "arguments": "{}"}]}, "input", "needs its name"),
])
def test_what_kvserve_does_not_take_is_a_400(tiny_server, fields, param, message):
    response = httpx.post(tiny_server.url + "/v1/responses", json={"model": MODEL, "input": "Hi", **fields})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert message in error["message"] and error["param"] == param
