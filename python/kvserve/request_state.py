"""The engine's Python-side state of one request: its n output sequences as they grow.

The C++ scheduler owns token bookkeeping for scheduling (progress, blocks, stop tokens); this side
keeps what only Python needs: the text (detokenizer), random generators, logprobs, metrics, and
what has already been reported to the caller.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from kvserve.bad_words import bad_words_token_ids
from kvserve.detokenizer import Detokenizer
from kvserve.grammar import CompiledGrammar
from kvserve.logprobs import PromptLogprobs, SampleLogprobs
from kvserve.lora.adapter import LoRAAdapter
from kvserve.outputs import CompletionOutput, PoolingOutput, PoolingRequestOutput, RequestMetrics, RequestOutput
from kvserve.pooling import PooledState
from kvserve.sampling_metadata import request_generator
from kvserve.sampling_params import RequestOutputKind, SamplingParams
from kvserve.tokenizer import Tokenizer


class SequenceState:
    """Output sequence `index` of a request (0..n-1)."""

    __slots__ = ("index", "token_ids", "detokenizer", "generator", "grammar", "logprobs", "cumulative_logprob",
                 "finish_reason", "stop_reason", "num_tokens_reported", "num_chars_reported")

    def __init__(self, index: int, params: SamplingParams, tokenizer: Tokenizer | None,
                 prompt_token_ids: Sequence[int], device: torch.device, grammar: CompiledGrammar | None = None):
        self.index = index
        self.token_ids: list[int] = []
        self.grammar = grammar.matcher(prompt_token_ids) if grammar is not None else None  # structured outputs
        self.detokenizer = (Detokenizer.from_params(tokenizer, params, prompt_token_ids)
                            if tokenizer is not None and params.detokenize else None)
        self.generator = request_generator(params, index, device)
        self.logprobs: SampleLogprobs | None = [] if params.logprobs is not None else None
        self.cumulative_logprob: float | None = 0.0 if params.logprobs is not None else None
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None
        self.num_tokens_reported = 0
        self.num_chars_reported = 0

    @property
    def text(self) -> str:
        return self.detokenizer.output_text if self.detokenizer is not None else ""

    def finish(self, reason: str, stop_token_id: int | None, params: SamplingParams) -> None:
        """End the sequence with the scheduler's reason; a stop string found in the last held-back
        text takes precedence (as it would have, had the text arrived earlier)."""
        self.finish_reason = reason
        if reason == "stop" and stop_token_id is not None and stop_token_id in params.stop_token_ids:
            self.stop_reason = stop_token_id
        if self.detokenizer is not None:
            stop = self.detokenizer.finish()
            if stop is not None:
                self.finish_reason, self.stop_reason = "stop", stop

    def to_output(self, kind: RequestOutputKind) -> CompletionOutput:
        # Copies (slices): the lists grow with the next steps, and an output handed out must not.
        text, first_token = self.text, 0
        if kind is RequestOutputKind.DELTA:
            first_token, first_char = self.num_tokens_reported, self.num_chars_reported
            self.num_tokens_reported, self.num_chars_reported = len(self.token_ids), len(text)
            text = text[first_char:]
        logprobs = self.logprobs[first_token:] if self.logprobs is not None else None
        return CompletionOutput(self.index, text, self.token_ids[first_token:], self.cumulative_logprob, logprobs,
                                self.finish_reason, self.stop_reason)


class RequestState:
    __slots__ = ("request_id", "prompt", "prompt_token_ids", "params", "sequences", "prompt_logprobs",
                 "metrics", "num_cached_tokens", "prompt_logprobs_reported", "_prompt_token_array", "lora",
                 "bad_words", "pooled")

    def __init__(self, request_id: str, prompt: str | None, prompt_token_ids: list[int], params: SamplingParams,
                 tokenizer: Tokenizer | None, arrival_time: float, device: torch.device,
                 grammar: CompiledGrammar | None = None, lora: LoRAAdapter | None = None,
                 pooled: PooledState | None = None, first_index: int = 0):
        """`grammar`: params.structured_outputs compiled (GrammarCompiler), which every sequence follows;
        `lora`: the LoRA adapter the request runs with; `pooled`: a pooling request's pool (its one
        sequence's token is a placeholder that ends it: kvserve.pooling); `first_index`: its first
        sequence's index (a child of a request fanned out: kvserve.fan_out)."""
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.sequences = [SequenceState(first_index + i, params, tokenizer, prompt_token_ids, device, grammar)
                          for i in range(params.n)]
        # Position 0 has no logprob (nothing predicts the first prompt token).
        self.prompt_logprobs: PromptLogprobs | None = [None] if params.prompt_logprobs is not None else None
        self.prompt_logprobs_reported = False
        self.metrics = RequestMetrics(arrival_time)
        self.num_cached_tokens: int | None = None  # set when first scheduled (Engine._launch)
        self._prompt_token_array: np.ndarray | None = None
        self.lora = lora
        # params.bad_words as token sequences (the tokenizer is there: the engine refuses them without one)
        self.bad_words = bad_words_token_ids(params.bad_words, tokenizer) if params.bad_words else []
        self.pooled = pooled

    @property
    def prompt_token_array(self) -> np.ndarray:
        """prompt_token_ids as int64, built on first use: a penalized row's sampling metadata reads
        the whole prompt every step (SamplingMetadata)."""
        if self._prompt_token_array is None:
            self._prompt_token_array = np.asarray(self.prompt_token_ids, dtype=np.int64)
        return self._prompt_token_array

    @property
    def finished(self) -> bool:
        return all(s.finish_reason is not None for s in self.sequences)

    def to_output(self) -> RequestOutput | PoolingRequestOutput | None:
        """The RequestOutput to report now, as params.output_kind asks (None: nothing to report); a
        pooling request's PoolingRequestOutput once it is pooled."""
        kind = self.params.output_kind
        finished = self.finished
        if self.pooled is not None:
            if not finished:
                return None
            return PoolingRequestOutput(self.request_id, self.prompt, self.prompt_token_ids,
                                        PoolingOutput(self.pooled.embedding), True, self.metrics, self.num_cached_tokens)
        if kind is RequestOutputKind.FINAL_ONLY and not finished:
            return None
        prompt_logprobs = self.prompt_logprobs
        if kind is RequestOutputKind.DELTA:
            # Prompt logprobs go out once, with the first delta.
            prompt_logprobs = None if self.prompt_logprobs_reported else prompt_logprobs
            self.prompt_logprobs_reported = True
        return RequestOutput(self.request_id, self.prompt, self.prompt_token_ids, prompt_logprobs,
                             [s.to_output(kind) for s in self.sequences], finished, self.metrics,
                             self.num_cached_tokens, self.lora.request if self.lora is not None else None)
