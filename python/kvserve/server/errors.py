"""Errors as OpenAI sends them, for every way a request can fail:

    HTTP 4xx/5xx  {"error": {"message": str, "type": str, "param": str | None, "code": str | None}}

Handlers raise OpenAIError; FastAPI's own failures (invalid JSON, wrong types, unknown routes) and
unexpected exceptions are turned into the same shape by the handlers installed here.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from kvserve.server.async_engine import EngineStoppedError, QueueFullError

logger = logging.getLogger("kvserve.server")


def _error_type(status_code: int) -> str:
    return "server_error" if status_code >= 500 else "invalid_request_error"


def error_body(message: str, status_code: int, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": _error_type(status_code), "param": param, "code": code}}


class OpenAIError(Exception):
    """A request that fails with `status_code` and an OpenAI error body."""

    def __init__(self, status_code: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict:
        return error_body(self.message, self.status_code, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status_code)


def bad_request(message: str, param: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param)


def overloaded(error: Exception) -> OpenAIError:
    """503 for a request the engine's waiting queue has no room for (QueueFullError): retry later."""
    return OpenAIError(503, f"The server is overloaded: {error}. Retry later.", code="server_overloaded")


def as_openai_error(error: Exception) -> OpenAIError:
    """An engine-side failure as an HTTP error: a rejected request (400), a full waiting queue or
    shutdown (503), else 500."""
    if isinstance(error, OpenAIError):
        return error
    if isinstance(error, ValueError):
        return bad_request(str(error))
    if isinstance(error, QueueFullError):
        return overloaded(error)
    if isinstance(error, EngineStoppedError):
        return OpenAIError(503, f"The server is not accepting requests: {error}", code="server_shutting_down")
    logger.error("request failed", exc_info=error)
    return OpenAIError(500, f"internal server error: {type(error).__name__}: {error}")


def _location(loc) -> str | None:
    """pydantic's error location, as OpenAI names params: ('body', 'messages', 0, 'role') -> messages.0.role.
    Union members ('list[int]') are left out."""
    parts = [str(p) for p in loc[1:] if not (isinstance(p, str) and ("[" in p or p in ("str", "int", "float")))]
    return ".".join(parts) or None


def _validation_message(error: dict) -> str:
    message = error["msg"].removeprefix("Value error, ")
    given = error.get("input")
    shown = repr(given) if not isinstance(given, (dict, list)) else type(given).__name__
    return f"{message} (got {shown[:80]})"


async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if not errors:
        return JSONResponse(error_body("invalid request", 400), status_code=400)
    # Of a union's failed alternatives, the deepest says the most (a bad part beats "not a string").
    error = max(errors, key=lambda e: len(e["loc"]))
    if error["type"] == "json_invalid":
        reason = error.get("ctx", {}).get("error", error["msg"])
        return JSONResponse(error_body(f"the request body is not valid JSON: {reason} (at character "
                                       f"{error['loc'][-1]})", 400), status_code=400)
    if error["type"] == "model_attributes_type":
        return JSONResponse(error_body("the request body must be a JSON object", 400), status_code=400)
    param = _location(error["loc"])
    message = _validation_message(error)
    if param is not None:
        message = f"{param}: {message}"
    return JSONResponse(error_body(message, 400, param), status_code=400)


async def _on_http_exception(request: Request, exc: HTTPException) -> JSONResponse:
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if isinstance(exc.__cause__, UnicodeDecodeError):  # FastAPI could not read the body as text
        message = f"the request body is not valid UTF-8: {exc.__cause__.reason} at byte {exc.__cause__.start}"
    elif exc.status_code == 404:
        message = f"{request.method} {request.url.path}: no such route"
    elif exc.status_code == 405:
        message = f"{request.method} {request.url.path}: method not allowed"
    return JSONResponse(error_body(message, exc.status_code), status_code=exc.status_code, headers=exc.headers)


async def _on_openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
    return exc.response()


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse(error_body(f"internal server error: {type(exc).__name__}: {exc}", 500), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_exception)
    app.add_exception_handler(OpenAIError, _on_openai_error)
    app.add_exception_handler(Exception, _on_unexpected)
