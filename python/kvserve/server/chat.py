"""POST /v1/chat/completions: a conversation through the model's chat template, streamed or not.
A stream opens each choice with a chunk carrying the assistant role, as OpenAI's does. Each choice's
text becomes its message through a Reply: tool calls as `tool_calls` (server/tools.py), a reasoning
model's thinking as `reasoning` (server/reasoning.py). Logprobs take OpenAI's chat format:

    "logprobs": {"content": [{"token": str, "logprob": float, "bytes": [int],
                              "top_logprobs": [{"token", "logprob", "bytes"}, ...]}]}   # top_logprobs entries

(with return_tokens_as_token_ids each "token" reads "token_id:N"; "bytes" stay the text's). With
return_token_ids (vLLM's) the response carries the prompt's "prompt_token_ids" (streamed: in the
first chunk) and each choice "token_ids", the tokens it generated (streamed: each chunk's).
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
from kvserve.server.reasoning import ReasoningReply
from kvserve.server.served_model import ServedModel
from kvserve.server.tools import Reply, check_tool_choice, parses_calls, reply_for

router = APIRouter()


def _token_entry(token_id: int, logprob: Logprob, as_id: bool) -> dict:
    text = logprob.decoded_token or ""
    return {"token": f"token_id:{token_id}" if as_id else text, "logprob": logprob.logprob,
            "bytes": list(text.encode("utf-8"))}


def token_logprobs(token_ids: list[int], entries: SampleLogprobs, num_top: int, as_ids: bool) -> list[dict]:
    """Each token's entry (the Responses API's output_text logprobs too); num_top: the top_logprobs
    entries of each (-1: all the engine gave, the vocabulary)."""
    content = []
    for token_id, entry in zip(token_ids, entries):
        top = sorted(entry.items(), key=lambda item: -item[1].logprob)[:None if num_top == -1 else num_top]
        content.append({**_token_entry(token_id, entry[token_id], as_ids),
                        "top_logprobs": [_token_entry(i, e, as_ids) for i, e in top]})
    return content


def _chat_logprobs(body: ChatCompletionRequest, served: ServedModel, token_ids: list[int],
                   entries: SampleLogprobs) -> dict | None:
    if not body.logprobs:
        return None
    return {"content": token_logprobs(token_ids, entries, body.top_logprobs or 0,
                                      body.tokens_as_ids(served.tokens_as_token_ids))}


def _check_unsupported(body: ChatCompletionRequest, served: ServedModel) -> None:
    try:
        check_tool_choice(body.tools, body.tool_choice, served.auto_tool_parser)
    except ValueError as e:
        raise bad_request(str(e), "tool_choice") from None
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_request("top_logprobs needs logprobs to be true", "top_logprobs")


def chat_reply(body: ChatCompletionRequest, served: ServedModel, prompt: str) -> Reply:
    """How one choice's text becomes its message: tool calls (server/tools.py), and the thinking
    apart from the answer where the server has a reasoning parser (unless a grammar holds the whole
    reply: a model without a </think> token)."""
    reply = reply_for(body.tools, body.tool_choice, served.auto_tool_parser)
    if served.reasoning_parser is not None and (served.reasoning_end is not None
                                                or body.structured_outputs_field is None):
        reply = ReasoningReply(served.reasoning_parser, reply, prompt)
    return reply


async def _choices(generation: Generation, body: ChatCompletionRequest, served: ServedModel) -> list[dict]:
    choices = []
    for index, choice in enumerate(await generation.collect()):
        message, finish_reason = chat_reply(body, served, generation.prompts[0].text).message(choice.text,
                                                                                              choice.finish_reason)
        choices.append({"index": index, "message": {"role": "assistant", **message},
                        "logprobs": _chat_logprobs(body, served, choice.token_ids, choice.logprobs),
                        "finish_reason": finish_reason, "stop_reason": choice.stop_reason,
                        **({"token_ids": choice.token_ids} if body.return_token_ids else {})})
    return choices


async def _chunk_choices(generation: Generation, body: ChatCompletionRequest,
                         served: ServedModel) -> AsyncIterator[dict]:
    for index in range(generation.num_choices):
        yield {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    replies = [chat_reply(body, served, generation.prompts[0].text) for _ in range(generation.num_choices)]
    # Token ids and logprobs wait for the next chunk their choice sends (a reply that holds text back
    # sends none for a while).
    unsent: list[Choice] = [Choice() for _ in range(generation.num_choices)]
    async for delta in generation.deltas():
        reply, waiting = replies[delta.index], unsent[delta.index]
        waiting.token_ids += delta.token_ids
        waiting.logprobs += delta.logprobs or []
        pieces = reply.feed(delta.text)
        finish_reason = None
        if delta.finish_reason is not None:
            more, finish_reason = reply.finish(delta.finish_reason)
            pieces += more
        if not pieces:
            if reply.holds_text and finish_reason is None:
                continue
            pieces = [{}]
        if finish_reason is not None and "tool_calls" in pieces[-1]:
            # The finish in a chunk of its own after the calls, as OpenAI sends it (the openai
            # client's stream helpers close a call's arguments there).
            pieces.append({})
        for j, piece in enumerate(pieces):
            last = j == len(pieces) - 1
            token_ids, logprobs = [], None
            if j == 0:  # what the choice made since its last chunk
                token_ids = waiting.token_ids
                logprobs = _chat_logprobs(body, served, token_ids, waiting.logprobs)
                waiting.token_ids, waiting.logprobs = [], []
            yield {"index": delta.index, "delta": piece, "logprobs": logprobs,
                   "finish_reason": finish_reason if last else None,
                   "stop_reason": delta.stop_reason if last and finish_reason is not None else None,
                   **({"token_ids": token_ids} if body.return_token_ids else {})}


def _top(generation: Generation, body: ChatCompletionRequest) -> dict:
    top = {"prompt_token_ids": generation.prompts[0].token_ids} if body.return_token_ids else {}
    if body.prompt_logprobs is not None:  # not streamed: the choices are in by now
        top["prompt_logprobs"] = generation.prompt_logprobs_json(0, body.prompt_logprobs)
    return top


ANSWER = AnswerFormat("chat.completion", "chat.completion.chunk", _choices, _chunk_choices, _top)


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, raw_request: Request):
    return await respond(raw_request, await start_chat(body, raw_request), body, ANSWER)


async def start_chat(body: ChatCompletionRequest, raw_request: Request) -> Generation:
    """Check a chat request, render its conversation and submit it (also the Responses API's way in,
    server/responses_api.py)."""
    served: ServedModel = raw_request.app.state.model
    served.check_name(body.model)
    _check_unsupported(body, served)
    if parses_calls(body.tools, body.tool_choice, served.auto_tool_parser):
        # The call tags may be special tokens (<|python_tag|>, [TOOL_CALLS]): kept, as vLLM's parsers keep them.
        body.skip_special_tokens = False
    text = await asyncio.to_thread(served.render_chat, body)
    prompt = EnginePrompt(await asyncio.to_thread(served.encode, text, body.add_special_tokens, "messages"), text)
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    generation = await start_generation(
        raw_request, body, [prompt], prefix="chatcmpl", param="messages",
        max_tokens=requested if requested is not None else served.default_sampling.get("max_tokens"),
        explicit_max_tokens=requested is not None, logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        max_tokens_param="max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens",
        logprobs_param="top_logprobs")
    return generation
