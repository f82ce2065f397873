"""How completions and chat completions answer: one JSON body when the run is done, or server-sent
events as it goes, exactly as OpenAI sends them:

    data: {"id", "object": <chunk object>, "created", "model", "choices": [one choice]}   per chunk
    data: {..., "choices": [], "usage": {...}}        last, when stream_options.include_usage
    data: [DONE]

With stream_options.continuous_usage_stats each chunk carries its choice's usage so far, as vLLM's
do; the first chunk carries what a whole answer has beside its choices (chat's prompt_token_ids).

Either way the request is aborted as soon as the client goes away, and its KV blocks are freed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from kvserve.server.async_engine import RequestStream
from kvserve.server.errors import as_openai_error
from kvserve.server.generation import Generation
from kvserve.server.protocol import GenerationRequest
from kvserve.server.served_model import ServedModel

SSE_DONE = "data: [DONE]\n\n"


@dataclass(frozen=True)
class AnswerFormat:
    """How an endpoint spells its answer: the object names, and its choices, whole or chunk by chunk."""

    object: str  # "text_completion", "chat.completion"
    chunk_object: str  # "text_completion", "chat.completion.chunk"
    choices: Callable[[Generation, Any, ServedModel], Awaitable[list[dict]]]
    chunk_choices: Callable[[Generation, Any, ServedModel], AsyncIterator[dict]]
    # Fields beside the choices (in a stream, of its first chunk).
    top: Callable[[Generation, Any], dict] = lambda generation, body: {}


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def _events(generation: Generation, body: GenerationRequest, head: dict, top: dict,
                  choices: AsyncIterator[dict], force_usage: bool) -> AsyncIterator[str]:
    # A failure mid-stream becomes a `data: {"error": ...}` event. Starlette cancels this generator
    # when the client disconnects, and the `finally` aborts the request then.
    last_usage, continuous = body.stream_usage(force_usage)
    try:
        async for choice in choices:
            usage = {"usage": generation.choice_usage(choice["index"]) if continuous else None} if last_usage else {}
            yield _sse({**head, **top, "choices": [choice], **usage})
            top = {}
        if last_usage:
            yield _sse({**head, "choices": [], "usage": generation.usage()})
        yield SSE_DONE
    except Exception as error:
        yield _sse(as_openai_error(error).body())
        yield SSE_DONE
    finally:
        generation.close()


async def _wait_for_disconnect(raw_request: Request) -> None:
    while (await raw_request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(raw_request: Request, generation: Generation | RequestStream, work: Awaitable):
    """`work`'s result, awaited while watching the connection: a client that leaves aborts the
    request at once (and None is returned), instead of when its last token would have come."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(raw_request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
        generation.close()
    if not task.done() or task.cancelled():
        return None
    if task.exception() is not None:
        raise as_openai_error(task.exception()) from task.exception()
    return task.result()


async def respond(raw_request: Request, generation: Generation, body: GenerationRequest,
                  answer: AnswerFormat) -> Response:
    served: ServedModel = raw_request.app.state.model
    created = int(time.time())

    def head(object_name: str) -> dict:
        return {"id": generation.request_id, "object": object_name, "created": created, "model": generation.model_name}

    if body.stream:
        events = _events(generation, body, head(answer.chunk_object), answer.top(generation, body),
                         answer.chunk_choices(generation, body, served), served.force_include_usage)
        return StreamingResponse(events, media_type="text/event-stream")
    choices = await unless_disconnected(raw_request, generation, answer.choices(generation, body, served))
    if choices is None:
        return Response(status_code=499)  # nobody will read it: the client is gone
    return JSONResponse({**head(answer.object), **answer.top(generation, body), "choices": choices,
                         "usage": generation.usage()})
