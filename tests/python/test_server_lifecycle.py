"""The server under load and as clients come and go: 64 concurrent streams batched together with
exact usage counts; a client that disconnects (streaming or not) aborts its request and frees its
KV blocks at once (with steps scheduled ahead too); SIGTERM/SIGINT finish what fits in
--shutdown-timeout, abort the rest, exit 0.

The tiny model here has a 32k-token context, so that a long request runs for tens of seconds (a
step takes about a millisecond): a request that is still running when checked did not just finish."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from server_process import ServerProcess

MODEL = "tiny-long"
LONG = 30000  # tokens: far longer to decode than any check below waits


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("LlamaForCausalLM", max_position_embeddings=32768)


@pytest.fixture(scope="module", params=[(), ("--async-scheduling",)], ids=["plain", "ahead"])
def server(model_dir, request):
    """The server as it runs on the CPU, and with each step scheduled ahead of the last one's tokens
    (the GPU's default)."""
    with ServerProcess(model_dir, "--served-model-name", MODEL, *request.param) as server:
        yield server


def wait_for(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_64_concurrent_streams_are_batched_with_exact_usage(server):
    lengths = [8 + i % 9 for i in range(64)]

    async def one(client: openai.AsyncOpenAI, i: int):
        stream = await client.completions.create(
            model=MODEL, prompt=f"request {i}: ka lo mi", max_tokens=lengths[i], temperature=0.8, top_p=0.9, seed=i,
            stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        num_chunks, text, usage, times = 0, "", None, []
        async for chunk in stream:
            if chunk.choices:
                num_chunks += 1
                text += chunk.choices[0].text
                times.append(time.monotonic())
            usage = chunk.usage or usage
        return num_chunks, usage, (times[0], times[-1])

    async def run():
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        results = await asyncio.gather(*(one(client, i) for i in range(64)))
        await client.close()
        return results

    results = asyncio.run(run())
    for (num_chunks, usage, _), length in zip(results, lengths):
        assert num_chunks == length and usage.completion_tokens == length  # one token per step and chunk
        assert usage.total_tokens == usage.prompt_tokens + length
    # Batched: streams were open together (run one at a time, each would end before the next began).
    spans = [span for _, _, span in results]
    assert max(sum(start <= t <= end for start, end in spans) for t, _ in spans) > 1
    assert server.metric("kvserve:kv_cache_usage_perc") == 0.0


def test_a_disconnected_stream_frees_its_blocks_at_once(server):
    aborted = server.metric("kvserve:request_success_total", finished_reason="abort")
    payload = {"model": MODEL, "prompt": "Hi", "max_tokens": LONG, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=payload, timeout=60) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
        assert server.metric("kvserve:num_requests_running") == 1.0
        assert server.metric("kvserve:kv_cache_usage_perc") > 0.0
    wait_for(lambda: server.metric("kvserve:kv_cache_usage_perc") == 0.0)
    assert server.metric("kvserve:num_requests_running") == 0.0
    assert server.metric("kvserve:request_success_total", finished_reason="abort") == aborted + 1


def test_a_disconnected_non_streaming_request_frees_its_blocks_at_once(server):
    aborted = server.metric("kvserve:request_success_total", finished_reason="abort")
    payload = {"model": MODEL, "prompt": "Hi", "max_tokens": LONG, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        httpx.post(server.url + "/v1/completions", json=payload, timeout=httpx.Timeout(60, read=1.0))
    wait_for(lambda: server.metric("kvserve:request_success_total", finished_reason="abort") == aborted + 1)
    assert server.metric("kvserve:kv_cache_usage_perc") == 0.0
    assert server.metric("kvserve:num_requests_running") == 0.0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_finishes_short_requests_aborts_long_ones_and_exits_0(model_dir, sig):
    server = ServerProcess(model_dir, "--served-model-name", MODEL, "--shutdown-timeout", "3", "--api-key", "k")

    def stream(max_tokens: int, started: threading.Event) -> list[str]:
        payload = {"model": MODEL, "prompt": "Hi", "max_tokens": max_tokens, "stream": True, "ignore_eos": True}
        lines = []
        with httpx.stream("POST", server.url + "/v1/completions", json=payload,
                          headers={"Authorization": "Bearer k"}, timeout=60) as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    lines.append(line)
                    started.set()
        return lines

    try:
        with ThreadPoolExecutor(2) as pool:
            long_started, short_started = threading.Event(), threading.Event()
            long = pool.submit(stream, LONG, long_started)
            assert long_started.wait(30)
            short = pool.submit(stream, 100, short_started)
            assert short_started.wait(30)
            server.process.send_signal(sig)  # both in flight: the short one has ~100 steps to go
            short, long = short.result(), long.result()
        returncode = server.process.wait(60)
    finally:
        server.stop(signal.SIGKILL)
    assert returncode == 0, "".join(server.log[-20:])
    assert short[-1] == "data: [DONE]" and json.loads(short[-2].removeprefix("data: "))["choices"][0]["finish_reason"] == "length"
    # Cut when the shutdown timeout ran out, with an error the client can read.
    error = json.loads(long[-2].removeprefix("data: "))["error"]
    assert len(long) < LONG and long[-1] == "data: [DONE]" and "shutting down" in error["message"]
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/health")
