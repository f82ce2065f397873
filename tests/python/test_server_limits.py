"""A server with an API key (from KVSERVE_API_KEY), a batch of one with room for two waiting
requests, priority scheduling and no prefix caching: what needs the key and what does not, 503
once the waiting room is full, the waiting request of the lower priority first, and no prefix-cache
hits."""

from __future__ import annotations

import os
import time
from contextlib import ExitStack

import httpx
import openai
import pytest

from server_process import ServerProcess

MODEL = "tiny"
KEY = "sk-test-key"


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    os.environ["KVSERVE_API_KEY"] = KEY
    try:
        # A long context, so that a request can run for as long as the test needs.
        with ServerProcess(tiny_model_dir("LlamaForCausalLM", max_position_embeddings=32768), "--served-model-name",
                           MODEL, "--max-num-seqs", "1", "--max-waiting", "2", "--no-enable-prefix-caching",
                           "--scheduling-policy", "priority") as server:
            yield server
    finally:
        del os.environ["KVSERVE_API_KEY"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}],
                         ids=["missing", "wrong", "not-bearer"])
@pytest.mark.parametrize("method,path", [("GET", "/v1/models"), ("POST", "/v1/completions"),
                                         ("POST", "/v1/chat/completions"), ("GET", "/v1/nothing"),
                                         ("POST", "/score"), ("POST", "/rerank"), ("POST", "/v2/rerank"),
                                         ("POST", "/classify"), ("POST", "/pooling")])
def test_every_v1_route_needs_the_key(server, headers, method, path):
    response = httpx.request(method, server.url + path, headers=headers, json={"prompt": "Hi"})
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"


def test_the_right_key_opens_v1_and_the_other_routes_need_none(server):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong").models.list()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY)
    assert client.completions.create(model=MODEL, prompt="Hi", max_tokens=2).usage.completion_tokens <= 2
    for path in ("/health", "/version", "/metrics"):
        assert httpx.get(server.url + path).status_code == 200
    assert httpx.post(server.url + "/tokenize", json={"prompt": "Hi"}).status_code == 200


def test_a_full_waiting_room_answers_503_then_serves_again(server):
    headers = {"Authorization": f"Bearer {KEY}"}

    def payload(max_tokens: int) -> dict:
        return {"model": MODEL, "prompt": "Hi", "max_tokens": max_tokens, "stream": True, "ignore_eos": True}

    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as http, ExitStack() as streams:
        running = streams.enter_context(http.stream("POST", "/v1/completions", json=payload(30000)))
        lines = running.iter_lines()  # kept: a dropped iterator closes the response
        assert next(line for line in lines if line.startswith("data:"))  # the one running sequence
        waiting = [streams.enter_context(http.stream("POST", "/v1/completions", json=payload(4))) for _ in range(2)]
        assert [response.status_code for response in waiting] == [200, 200]
        deadline = time.monotonic() + 20
        while server.metric("kvserve:num_requests_waiting") < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        full = http.post("/v1/completions", json={**payload(4), "stream": False})
        assert full.status_code == 503
        assert full.json()["error"]["type"] == "server_error" and full.json()["error"]["code"] == "server_overloaded"
        with pytest.raises(openai.InternalServerError):
            openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0).chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
        running.close()  # its client leaves: the request is aborted, and the waiting ones run and finish
        for response in waiting:
            assert [line for line in response.iter_lines() if line][-1] == "data: [DONE]"
        assert http.post("/v1/completions", json={**payload(4), "stream": False}).status_code == 200


def test_a_waiting_request_of_a_lower_priority_runs_first(server):
    """Behind a running request, a long one of priority 5 and then a short one of priority -5 wait;
    the short one runs as soon as the batch has room, and ends while the long one runs."""
    def payload(max_tokens: int, priority: int) -> dict:
        return {"model": MODEL, "prompt": "Hi", "max_tokens": max_tokens, "stream": True, "ignore_eos": True,
                "priority": priority}

    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as http, \
            ExitStack() as streams:
        running = streams.enter_context(http.stream("POST", "/v1/completions", json=payload(30000, 0)))
        lines = running.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
        late = streams.enter_context(http.stream("POST", "/v1/completions", json=payload(30000, 5)))
        urgent = streams.enter_context(http.stream("POST", "/v1/completions", json=payload(4, -5)))
        deadline = time.monotonic() + 20
        while server.metric("kvserve:num_requests_waiting") < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        running.close()
        assert [line for line in urgent.iter_lines() if line][-1] == "data: [DONE]"
        assert server.metric("kvserve:num_requests_running") == 1  # the long one, begun after it
        late.close()


def test_more_prompts_than_the_batch_and_the_waiting_room_hold_is_a_bad_request(server):
    response = httpx.post(server.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                          json={"model": MODEL, "prompt": ["a", "b", "c", "d"], "max_tokens": 1})
    assert response.status_code == 400 and "--max-waiting" in response.json()["error"]["message"]


def test_n_above_max_num_seqs_runs_its_samples_in_turn(server):
    """--max-num-seqs 1, n = 3: the samples run one after another (kvserve.fan_out), whole or streamed."""
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY)
    fields = dict(model=MODEL, prompt="Hi", max_tokens=3, n=3, temperature=1.0, seed=5, extra_body={"ignore_eos": True})
    whole = client.completions.create(**fields)
    assert [c.index for c in whole.choices] == [0, 1, 2] and whole.usage.completion_tokens == 9
    streamed = {}
    for chunk in client.completions.create(stream=True, **fields):
        for choice in chunk.choices:
            streamed[choice.index] = streamed.get(choice.index, "") + choice.text
    assert [streamed[i] for i in range(3)] == [c.text for c in whole.choices]


def test_browser_preflights_need_no_key(server):
    preflight = httpx.options(server.url + "/v1/chat/completions", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "*"


def test_no_prefix_cache_hits_when_prefix_caching_is_off(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY)
    prompt = list(range(10, 60))  # three full blocks of 16 tokens
    for _ in range(2):
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=1)
    assert server.metric("kvserve:prefix_cache_hits_total") == 0.0
