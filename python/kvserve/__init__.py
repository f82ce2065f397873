"""kvserve: an LLM inference and serving engine (paged KV cache, continuous batching)."""

from kvserve._C import __version__
from kvserve.sampling_params import SamplingParams

__all__ = ["SamplingParams", "__version__"]
