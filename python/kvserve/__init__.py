"""kvserve: an LLM inference and serving engine (paged KV cache, continuous batching)."""

from kvserve._C import __version__
from kvserve.beam_search import BeamSearchParams
from kvserve.engine import Engine
from kvserve.lora import LoRARequest
from kvserve.outputs import (ClassificationRequestOutput, CompletionOutput, EmbeddingRequestOutput,
                             PoolingRequestOutput, RequestOutput, ScoringRequestOutput)
from kvserve.pooling import PoolerConfig, PoolingParams
from kvserve.sampling_params import RequestOutputKind, SamplingParams
from kvserve.structured_outputs import StructuredOutputsParams

# vLLM users write `from vllm import LLM`; the same name works here.
LLM = Engine

__all__ = ["LLM", "BeamSearchParams", "ClassificationRequestOutput", "CompletionOutput", "EmbeddingRequestOutput", "Engine", "LoRARequest",
           "PoolerConfig", "PoolingParams", "PoolingRequestOutput", "RequestOutput", "RequestOutputKind", "SamplingParams",
           "ScoringRequestOutput", "StructuredOutputsParams", "__version__"]
