"""vLLM's use_beam_search in completions and chat completions: kvserve/beam_search.py's search, its
steps run on the server's engine beside other requests (each step one engine request of one token
per live beam, which the prefix cache serves from the step before). A stand-in for the request's
RequestStream: once the search ends it yields each prompt's n best beams as that prompt's samples,
whole (a stream sends them in one chunk each, as vLLM's does). close() aborts the step running.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from kvserve.beam_search import BeamSearch, BeamSearchParams
from kvserve.logprobs import Logprob, top_entries
from kvserve.lora import LoRARequest
from kvserve.outputs import CompletionOutput, RequestOutput
from kvserve.server.async_engine import AsyncEngine, EnginePrompt, QueueFullError, RequestStream
from kvserve.server.errors import overloaded


class BeamSearchStream:
    def __init__(self, engine: AsyncEngine, request_id: str, prompts: list[EnginePrompt], params: BeamSearchParams,
                 decode: Callable[[list[int]], str], logprobs: int | None, lora_request: LoRARequest | None = None,
                 cache_salt: str | None = None, priority: int = 0):
        """`logprobs`: the candidates each token's entry keeps besides the token (None: no entries)."""
        self._engine = engine
        self._request_id = request_id
        self._prompts = prompts
        self._search = BeamSearch([p.token_ids for p in prompts], params, engine.engine.eos_token_ids,
                                  engine.engine.max_model_len)
        self._decode = decode
        self._logprobs = logprobs
        self._submit_options = dict(lora_request=lora_request, cache_salt=cache_salt, priority=priority)
        self._step: RequestStream | None = None
        self._steps_submitted = 0
        self._closed = False

    def start(self) -> None:
        """Submit the first step (QueueFullError, EngineStoppedError as AsyncEngine.submit raises them)."""
        self._submit()

    def _submit(self) -> None:
        beams = self._search.next_step()
        if not beams or self._closed:
            self._step = None
            return
        self._step = self._engine.submit(f"{self._request_id}-beam{self._steps_submitted}",
                                         [EnginePrompt(tokens) for tokens in beams], self._search.step_params,
                                         **self._submit_options)
        self._steps_submitted += 1

    async def __aiter__(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        while self._step is not None:
            entries: dict[int, dict[int, Logprob]] = {}
            async for index, output in self._step:
                for sample in output.outputs:
                    if sample.logprobs:
                        entries[index] = sample.logprobs[0]
            if self._closed:  # the step was aborted under the loop: nothing to go on with
                return
            self._search.advance([entries[index] for index in range(len(self._step.request_ids))])
            try:
                self._submit()
            except QueueFullError as e:
                raise overloaded(e) from e
        for prompt_index, result in enumerate(self._search.outputs(self._decode)):
            prompt = self._prompts[prompt_index]
            samples = []
            for i, beam in enumerate(result.sequences):
                own = beam.tokens[len(prompt.token_ids):]
                samples.append(CompletionOutput(index=i, text=beam.text, token_ids=own,
                                                cumulative_logprob=beam.cum_logprob,
                                                logprobs=self._entries(own, beam.logprobs),
                                                finish_reason=beam.finish_reason))
            yield prompt_index, RequestOutput(f"{self._request_id}-{prompt_index}", prompt.text, prompt.token_ids,
                                              None, samples, finished=True)

    def _entries(self, token_ids: list[int], entries: list[dict[int, Logprob]]) -> list[dict[int, Logprob]] | None:
        """Each token's entry as the request asked: the token, then its `logprobs` likeliest candidates."""
        if self._logprobs is None:
            return None
        return [top_entries(entry, token_id, self._logprobs) for token_id, entry in zip(token_ids, entries)]

    def close(self) -> None:
        self._closed = True
        if self._step is not None:
            self._step.close()
