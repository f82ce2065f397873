"""The async load generator of `kvserve bench serve`: streams completions (or chat completions) from
any OpenAI-compatible server (kvserve, vLLM, llama.cpp's llama-server) and records each request's
timeline.

Requests go out in order; with a finite --request-rate the gaps between sends are drawn from a gamma
distribution with shape `burstiness` and mean 1/rate (burstiness 1: a Poisson process; lower:
burstier), and --max-concurrency caps how many are in flight. Streaming is read with aiohttp rather
than the openai package, so that a chunk is timestamped when its bytes arrive.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import numpy as np
from tqdm import tqdm

from kvserve.bench.datasets import SampleRequest
from kvserve.bench.metrics import RequestRecord

REQUEST_TIMEOUT_S = 6 * 60 * 60


@dataclass(frozen=True)
class Target:
    """Where requests go and how they are spelled."""

    url: str  # base URL + endpoint, e.g. http://127.0.0.1:8000/v1/completions
    model: str
    ignore_eos: bool = True
    api_key: str | None = None
    # False: send prompt token ids; True: each request's prompt_text (kvserve.bench.text_prompts).
    send_text: bool = False
    # Chat completions (vLLM's openai-chat backend): the prompt's text as one user message.
    chat: bool = False
    # Embeddings (vLLM's openai-embeddings backend): one answer, no stream, nothing generated.
    embeddings: bool = False

    @property
    def prompt_format(self) -> str:
        return "text" if self.send_text else "ids"

    def payload(self, request: SampleRequest) -> dict:
        if self.send_text and request.prompt_text is None:
            raise ValueError("a text target got a request without prompt_text (see kvserve.bench.text_prompts)")
        prompt = request.prompt_text if self.send_text else request.prompt_token_ids
        if self.embeddings:  # base64: the vectors' bytes, not their digits in JSON
            return {"model": request.model or self.model, "input": prompt, "encoding_format": "base64"}
        body = {
            "model": request.model or self.model,
            "max_completion_tokens" if self.chat else "max_tokens": request.expected_output_len,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.chat:
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        if self.ignore_eos:
            body["ignore_eos"] = True
        return body

    def carries_tokens(self, chunk: dict) -> bool:
        """Whether a streamed chunk brings output: any with choices for completions; for chat, one
        whose delta has text (the first chunk only names the role), as vLLM's benchmark reads them."""
        if not self.chat:
            return bool(chunk.get("choices"))
        return any((choice.get("delta") or {}).get(key) for choice in chunk.get("choices") or []
                   for key in ("content", "reasoning_content", "reasoning", "tool_calls"))

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def _sse_data(line: bytes) -> str | None:
    """The data of one server-sent-events line, or None for blank lines, comments and other fields."""
    text = line.decode("utf-8").strip()
    return text[len("data:"):].strip() if text.startswith("data:") else None


async def _send_embedding(session: aiohttp.ClientSession, target: Target, request: SampleRequest) -> RequestRecord:
    """One embeddings request: its latency is its answer's (its first and only "token" time too)."""
    record = RequestRecord(prompt_len=request.prompt_len)
    start = time.perf_counter()
    try:
        async with session.post(target.url, json=target.payload(request), headers=target.headers()) as response:
            body = await response.text()
            if response.status != 200:
                record.error = f"HTTP {response.status} {response.reason}: {body[:500]}"
                return record
            if not json.loads(body).get("data"):
                record.error = f"an answer without data: {body[:500]}"
                return record
    except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError, UnicodeDecodeError) as e:
        record.error = f"{type(e).__name__}: {e}"
        return record
    record.success = True
    record.latency = record.ttft = time.perf_counter() - start
    return record


async def send_request(session: aiohttp.ClientSession, target: Target, request: SampleRequest) -> RequestRecord:
    if target.embeddings:
        return await _send_embedding(session, target, request)
    record = RequestRecord(prompt_len=request.prompt_len)
    num_chunks, usage_tokens = 0, None
    start = last = time.perf_counter()
    try:
        async with session.post(target.url, json=target.payload(request), headers=target.headers()) as response:
            if response.status != 200:
                body = (await response.text())[:500]
                record.error = f"HTTP {response.status} {response.reason}: {body}"
                return record
            async for line in response.content:
                data = _sse_data(line)
                if data is None or data == "[DONE]":
                    continue
                chunk = json.loads(data)
                if "error" in chunk:
                    record.error = f"error in stream: {chunk['error']}"
                    return record
                if target.carries_tokens(chunk):
                    now = time.perf_counter()
                    if num_chunks == 0:
                        record.ttft = now - start
                    else:
                        record.itl.append(now - last)
                    last = now
                    num_chunks += 1
                if chunk.get("usage"):
                    usage_tokens = chunk["usage"].get("completion_tokens")
    except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError, UnicodeDecodeError) as e:
        record.error = f"{type(e).__name__}: {e}"
        return record
    if num_chunks == 0:
        record.error = "the stream ended without a chunk with choices (no first token)"
        return record
    record.success = True
    record.latency = last - start
    # Servers that stream one token per chunk but report no usage are counted by their chunks.
    record.output_tokens = usage_tokens if usage_tokens is not None else num_chunks
    return record


async def _arrivals(num_requests: int, request_rate: float, burstiness: float, seed: int) -> AsyncIterator[int]:
    rng = np.random.default_rng(seed)
    for i in range(num_requests):
        yield i
        if request_rate != float("inf") and i + 1 < num_requests:
            await asyncio.sleep(rng.gamma(shape=burstiness, scale=1.0 / (request_rate * burstiness)))


def _session(max_concurrency: int | None) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=max_concurrency or 0, keepalive_timeout=60)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S))


async def probe(target: Target, request: SampleRequest) -> RequestRecord:
    """One request before the clock starts: checks the server and the prompt format, warms it up."""
    async with _session(1) as session:
        return await send_request(session, target, request)


async def run_load(
    target: Target,
    requests: list[SampleRequest],
    request_rate: float = float("inf"),
    burstiness: float = 1.0,
    max_concurrency: int | None = None,
    seed: int = 0,
    show_progress: bool = True,
) -> tuple[list[RequestRecord], float]:
    """Sends every request; returns their records (in request order) and the seconds from the first
    send to the last finish."""
    if not request_rate > 0:
        raise ValueError(f"request rate {request_rate}: expected > 0 (or inf)")
    if not burstiness > 0:
        raise ValueError(f"burstiness {burstiness}: expected > 0")
    if max_concurrency is not None and max_concurrency < 1:
        raise ValueError(f"max concurrency {max_concurrency}: expected >= 1")
    slots = asyncio.Semaphore(max_concurrency or len(requests))
    with tqdm(total=len(requests), disable=not show_progress) as bar:
        async with _session(max_concurrency) as session:

            async def one(request: SampleRequest) -> RequestRecord:
                async with slots:
                    record = await send_request(session, target, request)
                bar.update(1)
                return record

            start = time.perf_counter()
            tasks = []
            async for i in _arrivals(len(requests), request_rate, burstiness, seed):
                tasks.append(asyncio.create_task(one(requests[i])))
            records = await asyncio.gather(*tasks)
            duration = time.perf_counter() - start
    return list(records), duration
