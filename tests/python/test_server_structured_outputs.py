"""Structured outputs through the server, as OpenAI's and vLLM's clients ask for them:
response_format (json_object, json_schema), vLLM's structured_outputs, and its earlier guided_*
fields; each answer equals the offline Engine's, and bad grammars are 400s naming the field."""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from kvserve import SamplingParams, StructuredOutputsParams

MODEL = "tiny"
MESSAGES = [{"role": "user", "content": "Say something."}]
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "size": {"enum": ["small", "large"]}},
          "required": ["ok", "size"], "additionalProperties": False}
GREEDY = dict(temperature=0, max_tokens=32)


def offline_chat(engine, structured_outputs: StructuredOutputsParams) -> str:
    [output] = engine.chat(MESSAGES, SamplingParams(**GREEDY, structured_outputs=structured_outputs), use_tqdm=False)
    return output.outputs[0].text


def test_json_schema_response_format_equals_the_offline_engine(tiny_client, tiny_engine):
    response = tiny_client.chat.completions.create(
        model=MODEL, messages=MESSAGES, **GREEDY,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}})
    text = response.choices[0].message.content
    assert text == offline_chat(tiny_engine, StructuredOutputsParams(json=SCHEMA))
    # Any whitespace between JSON tokens (as vLLM), which this random model repeats: the object
    # may not close within max_tokens.
    assert re.match(r'{"(ok|size)":', re.sub(r"\s", "", text)), text


def test_json_object_response_format_starts_an_object(tiny_client, tiny_engine):
    response = tiny_client.chat.completions.create(model=MODEL, messages=MESSAGES, **GREEDY,
                                                   response_format={"type": "json_object"})
    text = response.choices[0].message.content
    assert text == offline_chat(tiny_engine, StructuredOutputsParams(json_object=True))
    assert text.lstrip().startswith("{")


@pytest.mark.parametrize("extra, expected", [
    ({"structured_outputs": {"choice": ["red", "green", "blue"]}}, StructuredOutputsParams(choice=["red", "green",
                                                                                                   "blue"])),
    ({"structured_outputs": {"regex": "[0-9]{3}"}}, StructuredOutputsParams(regex="[0-9]{3}")),
    ({"guided_choice": ["up", "down"]}, StructuredOutputsParams(choice=["up", "down"])),
    ({"guided_regex": "(ab|cd)!"}, StructuredOutputsParams(regex="(ab|cd)!")),
    ({"guided_json": SCHEMA, "guided_whitespace_pattern": " ?"}, StructuredOutputsParams(json=SCHEMA,
                                                                                         whitespace_pattern=" ?")),
    ({"guided_grammar": 'root ::= "x" | "y"'}, StructuredOutputsParams(grammar='root ::= "x" | "y"')),
])
def test_vllm_fields_on_completions_equal_the_offline_engine(tiny_client, tiny_engine, extra, expected):
    response = tiny_client.completions.create(model=MODEL, prompt="Pick one:", **GREEDY, extra_body=extra)
    [reference] = tiny_engine.generate(["Pick one:"], SamplingParams(**GREEDY, structured_outputs=expected),
                                       use_tqdm=False)
    assert response.choices[0].text == reference.outputs[0].text
    assert response.choices[0].finish_reason == reference.outputs[0].finish_reason == "stop"


def test_a_streamed_choice_arrives_whole(tiny_client):
    stream = tiny_client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True, temperature=1.0,
                                                 seed=4, n=3, extra_body={"guided_choice": ["alpha", "beta"]})
    texts = ["", "", ""]
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert all(text in ("alpha", "beta") for text in texts), texts


@pytest.mark.parametrize("body, param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
     "response_format"),
    ({"structured_outputs": {"regex": "[a-"}}, "structured_outputs"),
    ({"guided_grammar": "root ::= (("}, "guided_grammar"),
    ({"guided_choice": []}, "guided_choice"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
    ({"structured_outputs": {"regexp": "a"}}, "structured_outputs"),
    ({"structured_outputs": {"structural_tag": "{}"}}, "structured_outputs"),
    ({"guided_regex": "a", "response_format": {"type": "json_object"}}, None),
    ({"guided_whitespace_pattern": " "}, None),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
])
def test_bad_structured_outputs_are_400s_and_the_server_goes_on(tiny_server, body, param):
    response = httpx.post(f"{tiny_server.url}/v1/chat/completions",
                          json={"model": MODEL, "messages": MESSAGES, "stream": True, **body}, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    health = httpx.get(f"{tiny_server.url}/health", timeout=10)
    assert health.status_code == 200


def test_the_openai_client_raises_for_a_bad_schema(tiny_client):
    with pytest.raises(openai.BadRequestError, match="not valid"):
        tiny_client.chat.completions.create(
            model=MODEL, messages=MESSAGES,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}})
