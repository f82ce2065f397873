"""POST /v1/completions: prompts as text or token ids (one or a list), streamed or not, with echo
and logprobs in OpenAI's completions format:

    "logprobs": {"tokens": [str], "token_logprobs": [float | None], "top_logprobs": [{str: float} | None],
                 "text_offset": [int]}     # None for the first prompt token under echo: nothing predicts it

With return_tokens_as_token_ids the tokens read "token_id:N" (text_offset still counts the text).
With return_token_ids (vLLM's) a choice carries "prompt_token_ids" (streamed: in its first chunk)
and "token_ids", the tokens it generated (streamed: each chunk's).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request

from kvserve.logprobs import Logprob, top_entries
from kvserve.server.errors import bad_request
from kvserve.server.generation import Generation, start_generation
from kvserve.server.protocol import CompletionRequest
from kvserve.server.responses import AnswerFormat, respond
from kvserve.server.served_model import ServedModel

router = APIRouter()


class _LogprobsWriter:
    """One choice's logprobs, added token by token and taken chunk by chunk; text_offset counts from
    the start of the choice's text, across chunks."""

    def __init__(self, served: ServedModel, as_ids: bool):
        self._decode = lambda token_id: served.tokenizer.decode([token_id])
        self._as_ids = as_ids  # tokens named "token_id:N"
        self._offset = 0
        self._lists: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}

    def _name(self, token_id: int, text: str) -> str:
        return f"token_id:{token_id}" if self._as_ids else text

    def add(self, token_ids: list[int], entries: list[dict[int, Logprob] | None]) -> None:
        for token_id, entry in zip(token_ids, entries):
            if entry is None:
                text, logprob, top = self._decode(token_id), None, None
            else:
                text, logprob = entry[token_id].decoded_token, entry[token_id].logprob
                top = {}
                for top_id, e in entry.items():  # the chosen token, then by rank: names alike keep the first
                    top.setdefault(self._name(top_id, e.decoded_token), e.logprob)
            for name, value in zip(self._lists, (self._name(token_id, text), logprob, top, self._offset)):
                self._lists[name].append(value)
            self._offset += len(text)

    def take(self) -> dict:
        taken = self._lists
        self._lists = {name: [] for name in taken}
        return taken


class _Echo:
    """What `echo` puts before each choice's first text: the prompt, and its logprobs."""

    def __init__(self, generation: Generation, served: ServedModel):
        self._generation = generation
        self._served = served

    def text(self, prompt_index: int) -> str:
        prompt = self._generation.prompts[prompt_index]
        return prompt.text if prompt.text is not None else self._served.tokenizer.decode(prompt.token_ids)

    def add_logprobs(self, writer: _LogprobsWriter, prompt_index: int, k: int) -> None:
        """The prompt's tokens with their k likeliest (the engine may have made more: prompt_logprobs)."""
        token_ids = self._generation.prompts[prompt_index].token_ids
        entries = self._generation.prompt_logprobs[prompt_index]
        writer.add(token_ids, [None if entry is None else top_entries(entry, token_id, k)
                               for token_id, entry in zip(token_ids, entries)])


def _choice(index: int, text: str, logprobs: dict | None, finish_reason, stop_reason, token_ids: dict) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason,
            "stop_reason": stop_reason, **token_ids}


def _token_ids(body: CompletionRequest, generation: Generation, prompt_index: int | None, token_ids: list[int]) -> dict:
    """return_token_ids' fields: the prompt's ids (prompt_index None: not in this chunk), the choice's."""
    if not body.return_token_ids:
        return {}
    prompt = {} if prompt_index is None else {"prompt_token_ids": generation.prompts[prompt_index].token_ids}
    return {**prompt, "token_ids": token_ids}


async def _choices(generation: Generation, body: CompletionRequest, served: ServedModel) -> list[dict]:
    echo = _Echo(generation, served)
    choices = []
    for index, choice in enumerate(await generation.collect()):
        prompt_index = index // body.n
        text, logprobs = choice.text, None
        if body.echo:
            text = echo.text(prompt_index) + text
        if body.logprobs is not None:
            writer = _LogprobsWriter(served, body.tokens_as_ids(served.tokens_as_token_ids))
            if body.echo:
                echo.add_logprobs(writer, prompt_index, body.logprobs)
            writer.add(choice.token_ids, choice.logprobs)
            logprobs = writer.take()
        choices.append(_choice(index, text, logprobs, choice.finish_reason, choice.stop_reason,
                               _token_ids(body, generation, prompt_index, choice.token_ids)))
        if body.prompt_logprobs is not None:
            choices[-1]["prompt_logprobs"] = generation.prompt_logprobs_json(prompt_index, body.prompt_logprobs)
    return choices


async def _chunk_choices(generation: Generation, body: CompletionRequest, served: ServedModel) -> AsyncIterator[dict]:
    echo = _Echo(generation, served)
    writers: dict[int, _LogprobsWriter] = {}  # also marks the choices that have begun
    async for delta in generation.deltas():
        text, logprobs = delta.text, None
        first = delta.index not in writers
        if first:
            writers[delta.index] = _LogprobsWriter(served, body.tokens_as_ids(served.tokens_as_token_ids))
        writer = writers[delta.index]
        if body.echo and first:
            text = echo.text(delta.prompt_index) + text
            if body.logprobs is not None:
                echo.add_logprobs(writer, delta.prompt_index, body.logprobs)
        if body.logprobs is not None:
            writer.add(delta.token_ids, delta.logprobs)
            logprobs = writer.take()
        yield _choice(delta.index, text, logprobs, delta.finish_reason, delta.stop_reason,
                      _token_ids(body, generation, delta.prompt_index if first else None, delta.token_ids))


ANSWER = AnswerFormat("text_completion", "text_completion", _choices, _chunk_choices)


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, raw_request: Request):
    served: ServedModel = raw_request.app.state.model
    served.check_name(body.model)
    if body.suffix is not None:
        raise bad_request("suffix is not supported: kvserve serves no fill-in-the-middle models", "suffix")
    if body.max_tokens == 0 and not body.echo:
        raise bad_request("max_tokens 0 generates nothing: it is only allowed with echo (the prompt and its logprobs)",
                          "max_tokens")
    echo_logprobs = body.logprobs if body.echo else None
    generation = await start_generation(
        raw_request, body, await asyncio.to_thread(served.prompts, body.prompt, body.add_special_tokens, "prompt"),
        prefix="cmpl", param="prompt",
        max_tokens=body.max_tokens if "max_tokens" in body.model_fields_set
        else served.default_sampling.get("max_tokens", body.max_tokens),
        explicit_max_tokens="max_tokens" in body.model_fields_set, logprobs=body.logprobs,
        prompt_logprobs=echo_logprobs, prompt_only=body.max_tokens == 0)
    return await respond(raw_request, generation, body, ANSWER)
