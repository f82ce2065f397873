"""What completions and chat completions share once their prompts are token ids: submitting to the
engine, turning its DELTA outputs into per-choice deltas, and usage counts.

Choices are numbered as OpenAI numbers them for several prompts: choice = prompt_index * n + sample.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request

from kvserve.logprobs import PromptLogprobs, SampleLogprobs, top_entries
from kvserve.sampling_params import logprobs_wanted, truncate_prompt
from kvserve.server.async_engine import AsyncEngine, EnginePrompt, EngineStoppedError, QueueFullError, RequestStream
from kvserve.server.beam_search_stream import BeamSearchStream
from kvserve.server.errors import as_openai_error, bad_request
from kvserve.server.protocol import GenerationRequest
from kvserve.server.request_log import log_request
from kvserve.server.served_model import ServedModel

logger = logging.getLogger("kvserve.server")

@dataclass
class ChoiceDelta:
    """What one choice gained in one engine step (the last one carries its finish_reason)."""

    index: int
    prompt_index: int
    text: str
    token_ids: list[int]
    logprobs: SampleLogprobs | None
    finish_reason: str | None
    stop_reason: int | str | None


@dataclass
class Choice:
    """One choice accumulated over the whole request (non-streaming responses)."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: SampleLogprobs = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    def add(self, delta: ChoiceDelta) -> None:
        self.text += delta.text
        self.token_ids += delta.token_ids
        self.logprobs += delta.logprobs or []
        self.finish_reason, self.stop_reason = delta.finish_reason, delta.stop_reason


class Generation:
    """One HTTP request's run through the engine."""

    def __init__(self, request_id: str, stream: RequestStream | BeamSearchStream, prompts: list[EnginePrompt], n: int,
                 prompt_only: bool = False, prompt_tokens_details: bool = False, model_name: str = ""):
        self.request_id = request_id
        self.model_name = model_name  # what the response's "model" says
        self.prompts = prompts
        self.n = n
        # Scoring a prompt (echo with max_tokens 0): the engine makes one token, which no choice shows.
        self.prompt_only = prompt_only
        self.prompt_logprobs: dict[int, PromptLogprobs] = {}
        self.completion_tokens = [0] * self.num_choices  # each choice's tokens so far
        # usage.prompt_tokens_details.cached_tokens (vLLM's --enable-prompt-tokens-details): each
        # prompt's tokens found in the prefix cache.
        self.prompt_tokens_details = prompt_tokens_details
        self.num_cached_tokens: dict[int, int] = {}
        self._stream = stream

    @property
    def num_choices(self) -> int:
        return len(self.prompts) * self.n

    async def deltas(self) -> AsyncIterator[ChoiceDelta]:
        """Each choice's deltas as the engine makes them; steps where a choice gained neither text,
        tokens nor an ending are left out."""
        finished: set[int] = set()
        async for prompt_index, output in self._stream:
            if output.prompt_logprobs is not None:
                self.prompt_logprobs[prompt_index] = output.prompt_logprobs
            if output.num_cached_tokens is not None:
                self.num_cached_tokens.setdefault(prompt_index, output.num_cached_tokens)
            for sample in output.outputs:
                index = prompt_index * self.n + sample.index
                if index in finished or not (sample.token_ids or sample.text or sample.finish_reason):
                    continue
                if sample.finish_reason is not None:
                    finished.add(index)
                if self.prompt_only:
                    if sample.finish_reason is not None:
                        yield ChoiceDelta(index, prompt_index, "", [], [], "length", None)
                    continue
                self.completion_tokens[index] += len(sample.token_ids)
                yield ChoiceDelta(index, prompt_index, sample.text, sample.token_ids, sample.logprobs,
                                  sample.finish_reason, sample.stop_reason)

    async def collect(self) -> list[Choice]:
        choices = [Choice() for _ in range(self.num_choices)]
        async for delta in self.deltas():
            choices[delta.index].add(delta)
        return choices

    def prompt_logprobs_json(self, prompt_index: int, k: int) -> list[dict | None]:
        """vLLM's "prompt_logprobs" of a prompt: None for its first token (nothing predicts it), then
        {token id: {"logprob", "rank", "decoded_token"}}, the token's own and the k likeliest (-1: all)."""
        token_ids, entries = self.prompts[prompt_index].token_ids, self.prompt_logprobs[prompt_index]
        return [None if entry is None else
                {str(t): {"logprob": e.logprob, "rank": e.rank, "decoded_token": e.decoded_token}
                 for t, e in top_entries(entry, token_id, k).items()}
                for token_id, entry in zip(token_ids, entries)]

    def usage(self) -> dict:
        usage = _usage(sum(len(p.token_ids) for p in self.prompts), sum(self.completion_tokens))
        if self.prompt_tokens_details:
            usage["prompt_tokens_details"] = {"cached_tokens": sum(self.num_cached_tokens.values())}
        return usage

    def choice_usage(self, index: int) -> dict:
        """One choice's usage so far, as vLLM's continuous_usage_stats counts it: its prompt's tokens and its own."""
        return _usage(len(self.prompts[index // self.n].token_ids), self.completion_tokens[index])

    def close(self) -> None:
        """Abort whatever has not finished (the client left, or the response is done)."""
        self._stream.close()


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _truncated(prompt: EnginePrompt, keep: int, max_model_len: int) -> EnginePrompt:
    """The prompt's last `keep` tokens (truncate_prompt), without text when cut: echo then shows the
    kept tokens' text. The engine would truncate too; here it is done first so the length checks
    see it."""
    token_ids = truncate_prompt(prompt.token_ids, keep, max_model_len)
    return prompt if len(token_ids) == len(prompt.token_ids) else EnginePrompt(token_ids)


async def start_generation(raw_request: Request, body: GenerationRequest, prompts: list[EnginePrompt], *, prefix: str,
                     param: str, max_tokens: int | None, explicit_max_tokens: bool, logprobs: int | None,
                     prompt_logprobs: int | None = None, max_tokens_param: str = "max_tokens",
                     logprobs_param: str = "logprobs", prompt_only: bool = False) -> Generation:
    """Check the prompts against the model and submit them: 400 for what does not fit, 503 when the
    server is full or stopping. max_tokens_param, logprobs_param: the fields max_tokens and the
    logprobs counts came from (errors name them).
    prompt_only: generate nothing (one token, not shown): the prompts alone, for their logprobs.
    A structured output's grammar is compiled here, on a worker thread (a large schema takes a while,
    which the engine's thread would otherwise spend between steps), so that a bad one is a 400."""
    served: ServedModel = raw_request.app.state.model
    engine: AsyncEngine = raw_request.app.state.engine
    if served.pools:
        raise bad_request(f"this server pools (--runner pooling): it serves /v1/embeddings, not {raw_request.url.path}",
                          "model")
    lora = served.check_name(body.model)
    if body.model_extra:
        logger.warning("ignored request fields kvserve does not know: %s", ", ".join(sorted(body.model_extra)))
    if body.use_beam_search and prompt_only:
        raise bad_request("use_beam_search generates tokens: max_tokens 0 (the prompt alone) has none to search",
                          "use_beam_search")
    if body.stream_options is not None and not body.stream:
        raise bad_request("stream_options is only allowed when stream is true", "stream_options")
    for count in (logprobs, prompt_logprobs):
        served.check_logprobs(count, logprobs_param)
    if body.prompt_logprobs is not None:
        served.check_logprobs(body.prompt_logprobs, "prompt_logprobs")
        if body.stream:
            raise bad_request("prompt_logprobs are not available with stream: true", "prompt_logprobs")
        if body.use_beam_search:
            raise bad_request("prompt_logprobs are not available with use_beam_search", "prompt_logprobs")
        # One count for the engine: the larger of echo's and the field's (each sees its own).
        counts = (prompt_logprobs, body.prompt_logprobs)
        prompt_logprobs = max(logprobs_wanted(c, served.vocab_size) for c in counts if c is not None)
    if body.priority != 0 and engine.engine.scheduling_policy != "priority":
        raise bad_request(f"priority {body.priority} needs a server started with --scheduling-policy priority "
                          "(this one runs requests in arrival order)", "priority")
    if len(prompts) * body.n > engine.max_accepted_seqs:  # more than the server ever takes: no use retrying
        raise bad_request(f"the request holds {len(prompts)} prompts of n = {body.n} samples; this server takes at "
                          f"most {engine.max_accepted_seqs} at once (--max-num-seqs running, --max-waiting waiting)",
                          param)
    if body.truncate_prompt_tokens is not None:
        prompts = [_truncated(p, body.truncate_prompt_tokens, served.max_model_len) for p in prompts]
    for prompt in prompts:
        served.check_token_ids(prompt.token_ids, param)
    if prompt_only:
        max_tokens, explicit_max_tokens = 1, True
    max_tokens = served.fit_max_tokens(max(len(p.token_ids) for p in prompts), max_tokens, explicit_max_tokens, param,
                                       max_tokens_param)
    try:
        structured_field = body.structured_outputs_field
    except ValueError as e:  # several fields ask for it
        raise bad_request(str(e)) from None
    try:
        structured = body.structured_outputs_params()
        if structured is not None:
            await asyncio.to_thread(engine.engine.grammars.compile, structured)
    except ValueError as e:
        raise bad_request(str(e), structured_field) from None
    try:
        params = body.sampling_params(max_tokens=max_tokens, logprobs=logprobs, prompt_logprobs=prompt_logprobs,
                                      defaults=served.default_sampling, structured_outputs=structured)
        params.check_token_ids(served.vocab_size)
    except ValueError as e:
        raise bad_request(str(e)) from None
    # As vLLM: a client's X-Request-Id names the response (its id, prefix-<header>); the engine's ids
    # carry it too, made unique, so that two requests sent with one header do not collide.
    client_id = raw_request.headers.get("x-request-id")
    request_id = f"{prefix}-{client_id or uuid.uuid4().hex}"
    engine_id = request_id if client_id is None else f"{request_id}-{uuid.uuid4().hex[:12]}"
    try:
        beam_params = body.beam_search_params(max_tokens) if body.use_beam_search else None
    except ValueError as e:
        raise bad_request(str(e), "use_beam_search") from None
    try:
        if beam_params is not None:
            decode = functools.partial(served.tokenizer.decode, skip_special_tokens=body.skip_special_tokens)
            stream = BeamSearchStream(engine, engine_id, prompts, beam_params, decode, logprobs, lora, body.cache_salt,
                                      body.priority)
            stream.start()
        else:
            stream = engine.submit(engine_id, prompts, params, lora, body.cache_salt, body.priority)
    except (QueueFullError, EngineStoppedError) as e:
        raise as_openai_error(e) from None
    log_request(raw_request, engine_id, prompts, beam_params or params, lora)
    return Generation(request_id, stream, prompts, body.n, prompt_only, served.prompt_tokens_details,
                      served.response_name(lora))
