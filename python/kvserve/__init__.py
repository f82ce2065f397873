"""kvserve: an LLM inference and serving engine (paged KV cache, continuous batching)."""

from kvserve._C import __version__

__all__ = ["__version__"]
