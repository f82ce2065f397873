"""What `Engine.generate` and `Engine.embed` return, with vLLM's classes and field names."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvserve.logprobs import PromptLogprobs, SampleLogprobs
from kvserve.lora.request import LoRARequest


@dataclass
class RequestMetrics:
    """Wall-clock times (time.time(), seconds) of one request's milestones; None until reached."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None


@dataclass
class CompletionOutput:
    """One generated sequence of a request.

    finish_reason: None while running, then "stop" (end-of-sequence, a stop token or a stop
    string) or "length" (max_tokens or the context length). stop_reason: the stop string or stop
    token id that ended it; None for end-of-sequence and "length".
    """

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: SampleLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    """A request's prompt and its n outputs (`outputs[i].index == i`). num_cached_tokens: the
    prompt tokens its first step found in the prefix cache (None before it is scheduled);
    lora_request: the LoRA adapter it ran with."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: PromptLogprobs | None
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics | None = None
    num_cached_tokens: int | None = None
    lora_request: LoRARequest | None = None


@dataclass
class PoolingOutput:
    """A pooled prompt (kvserve.pooling): its vector, float32 on the host."""

    data: torch.Tensor


@dataclass
class PoolingRequestOutput:
    """What a pooling engine's step reports for a request: once, when its prompt is pooled."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: PoolingOutput
    finished: bool = True
    metrics: RequestMetrics | None = None
    num_cached_tokens: int | None = None


@dataclass
class ScoringOutput:
    score: float


@dataclass
class ScoringRequestOutput:
    """What Engine.score returns, one per pair (vLLM's); prompt_token_ids: the pair's, one after the other."""

    request_id: str
    prompt_token_ids: list[int]
    outputs: ScoringOutput
    finished: bool = True


@dataclass
class ClassificationOutput:
    probs: list[float]

    @property
    def num_classes(self) -> int:
        return len(self.probs)


@dataclass
class ClassificationRequestOutput:
    """What Engine.classify returns, one per prompt (vLLM's)."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: ClassificationOutput
    finished: bool = True


@dataclass
class EmbeddingOutput:
    embedding: list[float]

    @property
    def hidden_size(self) -> int:
        return len(self.embedding)


@dataclass
class EmbeddingRequestOutput:
    """What Engine.embed returns, one per prompt (vLLM's)."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: EmbeddingOutput
    finished: bool = True

    @classmethod
    def from_base(cls, output: PoolingRequestOutput) -> EmbeddingRequestOutput:
        return cls(output.request_id, output.prompt, output.prompt_token_ids,
                   EmbeddingOutput(output.outputs.data.tolist()), output.finished)
