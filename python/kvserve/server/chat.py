"""POST /v1/chat/completions: a conversation through the model's chat template, streamed or not.
A stream opens each choice with a chunk carrying the assistant role, as OpenAI's does. A forced tool
call (server/tools.py) answers with `tool_calls`. Logprobs take OpenAI's chat format:

    "logprobs": {"content": [{"token": str, "logprob": float, "bytes": [int],
                              "top_logprobs": [{"token", "logprob", "bytes"}, ...]}]}   # top_logprobs entries
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request

from kvserve.logprobs import Logprob, SampleLogprobs
from kvserve.server.async_engine import EnginePrompt
from kvserve.server.errors import bad_request
from kvserve.server.generation import Choice, Generation, start_generation
from kvserve.server.protocol import ChatCompletionRequest
from kvserve.server.responses import AnswerFormat, respond
from kvserve.server.served_model import ServedModel
from kvserve.server.tools import check_tool_choice, forced, template_tools, tool_calls

router = APIRouter()


def _token_entry(logprob: Logprob) -> dict:
    token = logprob.decoded_token or ""
    return {"token": token, "logprob": logprob.logprob, "bytes": list(token.encode("utf-8"))}


def _logprobs(token_ids: list[int], entries: SampleLogprobs, num_top: int) -> dict:
    content = []
    for token_id, entry in zip(token_ids, entries):
        top = sorted(entry.values(), key=lambda e: -e.logprob)[:num_top]
        content.append({**_token_entry(entry[token_id]), "top_logprobs": [_token_entry(e) for e in top]})
    return {"content": content}


def _check_unsupported(body: ChatCompletionRequest) -> None:
    try:
        check_tool_choice(body.tools, body.tool_choice)
    except ValueError as e:
        raise bad_request(str(e), "tool_choice") from None
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_request("top_logprobs needs logprobs to be true", "top_logprobs")


def _reply(choice: Choice, body: ChatCompletionRequest) -> tuple[dict, str | None]:
    """A finished choice's message fields and finish_reason: its text, or, where the request forced
    a tool call and the reply parses, the calls (finish_reason "tool_calls" for "required", "stop"
    for a named function, as OpenAI answers them)."""
    calls = tool_calls(choice.text, body.tool_choice) if forced(body.tool_choice) else None
    if calls is None:
        return {"content": choice.text}, choice.finish_reason
    reason = "tool_calls" if body.tool_choice == "required" and choice.finish_reason == "stop" else choice.finish_reason
    return {"content": None, "tool_calls": calls}, reason


async def _choices(generation: Generation, body: ChatCompletionRequest, served: ServedModel) -> list[dict]:
    choices = []
    for index, choice in enumerate(await generation.collect()):
        logprobs = _logprobs(choice.token_ids, choice.logprobs, body.top_logprobs or 0) if body.logprobs else None
        message, finish_reason = _reply(choice, body)
        choices.append({"index": index, "message": {"role": "assistant", **message},
                        "logprobs": logprobs, "finish_reason": finish_reason, "stop_reason": choice.stop_reason})
    return choices


async def _chunk_choices(generation: Generation, body: ChatCompletionRequest,
                         served: ServedModel) -> AsyncIterator[dict]:
    for index in range(generation.num_choices):
        yield {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    # A forced tool call goes out whole, in the choice's last chunk: its arguments are known to parse
    # only once the reply is complete (clients join a call's deltas, so one delta is a valid stream).
    held = {index: Choice() for index in range(generation.num_choices)} if forced(body.tool_choice) else None
    async for delta in generation.deltas():
        if held is not None:
            held[delta.index].add(delta)
            if delta.finish_reason is None:
                continue
            choice = held.pop(delta.index)
            message, finish_reason = _reply(choice, body)
            if "tool_calls" in message:
                message = {"tool_calls": [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]}
            logprobs = _logprobs(choice.token_ids, choice.logprobs, body.top_logprobs or 0) if body.logprobs else None
            yield {"index": delta.index, "delta": message, "logprobs": logprobs, "finish_reason": finish_reason,
                   "stop_reason": delta.stop_reason}
            continue
        logprobs = _logprobs(delta.token_ids, delta.logprobs, body.top_logprobs or 0) if body.logprobs else None
        yield {"index": delta.index, "delta": {"content": delta.text} if delta.text else {}, "logprobs": logprobs,
               "finish_reason": delta.finish_reason, "stop_reason": delta.stop_reason}


ANSWER = AnswerFormat("chat.completion", "chat.completion.chunk", _choices, _chunk_choices)


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, raw_request: Request):
    served: ServedModel = raw_request.app.state.model
    served.check_name(body.model)
    _check_unsupported(body)
    text = await asyncio.to_thread(served.render_chat, body, template_tools(body.tools))
    prompt = EnginePrompt(await asyncio.to_thread(served.encode, text, body.add_special_tokens, "messages"), text)
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    generation = await start_generation(
        raw_request, body, [prompt], prefix="chatcmpl", param="messages",
        max_tokens=requested if requested is not None else served.default_sampling.get("max_tokens"),
        explicit_max_tokens=requested is not None, logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        max_tokens_param="max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens")
    return await respond(raw_request, generation, body, ANSWER)
