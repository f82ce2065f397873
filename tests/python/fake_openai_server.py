"""A fake OpenAI-compatible streaming server for the load generator's protocol tests: one chunk per
token, a final usage chunk, `[DONE]`. It runs on its own thread and loop (the CLI under test runs
its own `asyncio.run`), on a loopback port the OS picks."""

from __future__ import annotations

import asyncio
import json
import socket
import threading

from aiohttp import web


class FakeOpenAIServer:
    def __init__(self, accept_token_ids: bool = True, max_tokens_limit: int | None = None):
        self.accept_token_ids = accept_token_ids
        self.max_tokens_limit = max_tokens_limit
        self.payloads: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._loop = asyncio.new_event_loop()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.payloads.append(body)
        if isinstance(body["prompt"], list) and not self.accept_token_ids:
            return web.json_response({"error": {"message": "prompt must be a string"}}, status=400)
        if self.max_tokens_limit is not None and body["max_tokens"] > self.max_tokens_limit:
            return web.json_response({"error": {"message": "max_tokens too large"}}, status=400)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(body["max_tokens"]):
            chunk = {"object": "text_completion", "choices": [{"index": 0, "text": " x", "finish_reason": None}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await asyncio.sleep(0.001)
        prompt_len = len(body["prompt"]) if isinstance(body["prompt"], list) else len(body["prompt"].split())
        usage = {"prompt_tokens": prompt_len, "completion_tokens": body["max_tokens"]}
        await response.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n".encode())
        self.in_flight -= 1
        return response

    def __enter__(self) -> FakeOpenAIServer:
        app = web.Application()
        app.router.add_post("/v1/completions", self._completions)
        self._runner = web.AppRunner(app)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result()
        return self

    async def _start(self) -> None:
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock).start()

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
