"""Every bad input gets its status code and OpenAI's error body, {"error": {"message", "type", "param",
"code"}}, and the server keeps serving afterwards with no KV block held."""

from __future__ import annotations

import json
import socket

import httpx
import openai
import pytest


MODEL = "tiny"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
USER = [{"role": "user", "content": "Hi"}]
MAX_BODY_BYTES = 16 * 2**20

# (path, body: a dict sent as JSON or bytes sent as they are, status, the error's param)
CASES = {
    "invalid JSON": (COMPLETIONS, b'{"prompt": "Hi", ', 400, None),
    "invalid UTF-8": (COMPLETIONS, b'{"prompt": "\xff\xfe"}', 400, None),
    "lone surrogate": (COMPLETIONS, b'{"prompt": "\\ud800"}', 400, "prompt"),
    "not an object": (COMPLETIONS, b"[1, 2]", 400, None),
    "max_tokens a string": (COMPLETIONS, {"prompt": "Hi", "max_tokens": "5"}, 400, "max_tokens"),
    "temperature a string": (COMPLETIONS, {"prompt": "Hi", "temperature": "hot"}, 400, "temperature"),
    "stream a number": (COMPLETIONS, {"prompt": "Hi", "stream": 1}, 400, "stream"),
    "n a float": (COMPLETIONS, {"prompt": "Hi", "n": 2.5}, 400, "n"),
    "unknown model": (COMPLETIONS, {"prompt": "Hi", "model": "gpt-9"}, 404, "model"),
    "prompt too long": (COMPLETIONS, {"prompt": [5] * 300}, 400, "prompt"),
    "max_tokens 0": (COMPLETIONS, {"prompt": "Hi", "max_tokens": 0}, 400, "max_tokens"),
    "max_tokens negative": (COMPLETIONS, {"prompt": "Hi", "max_tokens": -3}, 400, "max_tokens"),
    "max_tokens past the context": (COMPLETIONS, {"prompt": "Hi", "max_tokens": 400}, 400, "max_tokens"),
    "n too large": (COMPLETIONS, {"prompt": "Hi", "n": 129}, 400, "n"),
    "suffix": (COMPLETIONS, {"prompt": "Hi", "suffix": "end"}, 400, "suffix"),
    "empty prompt": (COMPLETIONS, {"prompt": ""}, 400, "prompt"),
    "empty prompt list": (COMPLETIONS, {"prompt": []}, 400, "prompt"),
    "mixed prompt list": (COMPLETIONS, {"prompt": [1, "a"]}, 400, "prompt"),
    "token id outside the vocabulary": (COMPLETIONS, {"prompt": [1, 1000]}, 400, "prompt"),
    "logprobs too many": (COMPLETIONS, {"prompt": "Hi", "logprobs": 21}, 400, "logprobs"),
    "logprobs of the vocabulary past --max-logprobs": (COMPLETIONS, {"prompt": "Hi", "logprobs": -1}, 400,
                                                       "logprobs"),
    "logprobs -2": (COMPLETIONS, {"prompt": "Hi", "logprobs": -2}, 400, "logprobs"),
    "top_logprobs too many": (CHAT, {"messages": USER, "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs"),
    "temperature negative": (COMPLETIONS, {"prompt": "Hi", "temperature": -1}, 400, "temperature"),
    "top_p zero": (COMPLETIONS, {"prompt": "Hi", "top_p": 0}, 400, "top_p"),
    "stop token outside the vocabulary": (COMPLETIONS, {"prompt": "Hi", "stop_token_ids": [5000]}, 400, None),
    "logit_bias key not an id": (COMPLETIONS, {"prompt": "Hi", "logit_bias": {"x": 1}}, 400, None),
    "min_tokens above max_tokens": (COMPLETIONS, {"prompt": "Hi", "max_tokens": 2, "min_tokens": 5}, 400, None),
    "a priority without the priority policy": (COMPLETIONS, {"prompt": "Hi", "priority": 1}, 400, "priority"),
    "beam search with top_k": (CHAT, {"messages": USER, "use_beam_search": True, "n": 2, "top_k": 3}, 400,
                               "use_beam_search"),
    "a bad word of whitespace": (COMPLETIONS, {"prompt": "Hi", "bad_words": [" "]}, 400, None),
    "bad_words a number": (COMPLETIONS, {"prompt": "Hi", "bad_words": 3}, 400, "bad_words"),
    "stream_options without stream": (COMPLETIONS, {"prompt": "Hi", "stream_options": {"include_usage": True}}, 400,
                                      "stream_options"),
    "no messages": (CHAT, {"model": MODEL}, 400, "messages"),
    "empty messages": (CHAT, {"messages": []}, 400, "messages"),
    "empty role": (CHAT, {"messages": [{"role": "", "content": "Hi"}]}, 400, "messages.0.role"),
    "max_completion_tokens past the context": (CHAT, {"messages": USER, "max_completion_tokens": 400}, 400,
                                               "max_completion_tokens"),
    "a request's chat template": (CHAT, {"messages": USER, "chat_template": "{{ 'x' }}"}, 400, "chat_template"),
    "a chat template in chat_template_kwargs": (CHAT, {"messages": USER, "chat_template_kwargs": {
        "chat_template": "{{ 'x' }}"}}, 400, "chat_template"),
    "chat_template_kwargs setting messages": (CHAT, {"messages": USER, "chat_template_kwargs": {"messages": []}}, 400,
                                              "chat_template_kwargs"),
    "chat_template_kwargs naming an argument": (CHAT, {"messages": USER, "chat_template_kwargs": {"self": 1}}, 400,
                                                "chat_template_kwargs"),
    "image part": (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, 400,
                   "messages.0.content.0.type"),
    "messages too long": (CHAT, {"messages": [{"role": "user", "content": "ka lo " * 200}]}, 400, "messages"),
    "max_completion_tokens 0": (CHAT, {"messages": USER, "max_completion_tokens": 0}, 400, "max_completion_tokens"),
    "top_logprobs without logprobs": (CHAT, {"messages": USER, "top_logprobs": 2}, 400, "top_logprobs"),
    "a tool without its function": (CHAT, {"messages": USER, "tools": [{"type": "function"}]}, 400,
                                    "tools.0.function"),
    "unknown chat model": (CHAT, {"messages": USER, "model": "gpt-9"}, 404, "model"),
}


def assert_openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    return error


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gets_its_status_and_an_openai_error(tiny_server, case):
    path, body, status, param = CASES[case]
    if isinstance(body, bytes):
        response = httpx.post(tiny_server.url + path, content=body, headers={"content-type": "application/json"})
    else:
        response = httpx.post(tiny_server.url + path, json=body)
    error = assert_openai_error(response, status)
    assert error["param"] == param, error
    if status == 404:
        assert error["code"] == "model_not_found"


def test_the_prompt_length_error_names_both_lengths(tiny_server):
    error = httpx.post(tiny_server.url + COMPLETIONS, json={"prompt": [5] * 300}).json()["error"]
    assert "300" in error["message"] and "256" in error["message"]


def test_unknown_routes_and_methods(tiny_server):
    assert_openai_error(httpx.get(tiny_server.url + "/v1/nothing"), 404)
    assert_openai_error(httpx.get(tiny_server.url + COMPLETIONS), 405)


def _raw_post(server, head: bytes, body: bytes = b"") -> bytes:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head + body)
        sock.shutdown(socket.SHUT_WR)
        return b"".join(iter(lambda: sock.recv(65536), b""))


def test_a_body_over_the_limit_is_refused_before_it_is_read(tiny_server):
    # Content-Length alone says it is too large: the answer comes without a byte of the body sent.
    head = (f"POST {COMPLETIONS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n").encode()
    reply = _raw_post(tiny_server, head)
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["type"] == "invalid_request_error"


def test_a_chunked_body_over_the_limit_is_refused(tiny_server):
    chunk = b"x" * 2**20
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_BODY_BYTES // len(chunk) + 1))
    head = (f"POST {COMPLETIONS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    assert _raw_post(tiny_server, head, body + b"0\r\n\r\n").startswith(b"HTTP/1.1 413 ")


def test_the_server_keeps_serving_and_holds_no_blocks(tiny_server):
    client = openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="unused")
    for _ in range(2):
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model=MODEL, prompt="Hi", max_tokens=0)
        response = client.completions.create(model=MODEL, prompt="Hi", max_tokens=3, temperature=0,
                                             extra_body={"ignore_eos": True})
        assert response.usage.completion_tokens == 3
    assert tiny_server.metric("kvserve:kv_cache_usage_perc") == 0.0
    assert tiny_server.metric("kvserve:num_requests_running") == 0.0


def test_no_request_id_header_unless_the_server_is_asked(tiny_server):
    response = httpx.post(tiny_server.url + COMPLETIONS, headers={"X-Request-Id": "mine"},
                          json={"prompt": "Hi", "max_tokens": 1})
    assert response.json()["id"] == "cmpl-mine" and "x-request-id" not in response.headers
