"""The guards every request passes before a route sees it, as plain ASGI middleware:

- ApiKeyMiddleware: with an API key set, every /v1 route, and /score, /rerank, /classify and /pooling, needs
  `Authorization: Bearer <key>` (401 otherwise); /health, /metrics, /version, /tokenize and
  /detokenize stay open, as in vLLM.
- BodySizeMiddleware: a request body over the limit is refused with 413, from its Content-Length
  before anything is read, or as soon as a chunked body passes the limit.
- RequestIdHeaderMiddleware (vLLM's --enable-request-id-headers): every response carries
  X-Request-Id, the request's own or a fresh one.
"""

from __future__ import annotations

import hmac
import json
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kvserve.server.errors import error_body


async def send_error(send: Send, status_code: int, message: str, code: str | None = None) -> None:
    body = json.dumps(error_body(message, status_code, code=code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status_code == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


# Routes the API key guards: /v1, as vLLM's, and the model-running routes outside it (vLLM leaves
# /score, /rerank, /classify and /pooling open; a key that guarded the completions but not them would guard
# little).
_KEYED_PATHS = ("/v1", "/v2", "/score", "/rerank", "/classify", "/pooling")


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, api_key: str):
        self.app = app
        self._expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(_KEYED_PATHS):
            given = _header(scope, b"authorization") or b""
            if not hmac.compare_digest(given, self._expected):
                what = "No API key provided" if not given else "Incorrect API key provided"
                await send_error(send, 401, f"{what}: send the header 'Authorization: Bearer <key>'",
                                 code="invalid_api_key")
                return
        await self.app(scope, receive, send)


class BodySizeMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    def _too_large(self) -> str:
        return f"the request body is larger than the server accepts ({self.max_body_bytes} bytes)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            await send_error(send, 413, self._too_large())
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # Raised inside the route's body read, so the app's error handlers answer it.
                    raise HTTPException(413, self._too_large())
            return message

        await self.app(scope, counting_receive, send)


class RequestIdHeaderMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _header(scope, b"x-request-id") or uuid.uuid4().hex.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id)]}
            await send(message)

        await self.app(scope, receive, send_with_id)
