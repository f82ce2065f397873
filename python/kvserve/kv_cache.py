"""The paged KV cache: how many blocks fit a memory budget, and the per-layer tensors.

Per layer, one key and one value tensor, the layout of vLLM v1 and flash-attn's paged API:

    key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_dim]   (the cache dtype)

The cache dtype is the model's, or a narrower float (kv_cache_dtype, vLLM's names): "fp8" 8-bit
floats, twice the tokens of a 16-bit cache in the same memory and half the bytes for attention to
read; "bfloat16" for a float32 model, half its bytes. Each element is stored rounded to the
cache's format, unscaled (as vLLM does for a checkpoint without KV-cache scales); the kernels read
the values the elements stand for (paged_attention.h), on the CPU and on CUDA GPUs alike.

Block 0 is the scheduler's null block (never handed to a request), so a budget of N blocks holds
N - 1 blocks of tokens.
"""

from __future__ import annotations

import torch

from kvserve.model_config import ModelConfig

# vLLM's CPU backend reserves 4 GiB for the KV cache unless told otherwise (VLLM_CPU_KVCACHE_SPACE).
DEFAULT_CPU_KV_CACHE_GB = 4.0

# vLLM's kv_cache_dtype names: "fp8" is e4m3 (3 mantissa bits, magnitudes up to 448); e5m2 trades a
# mantissa bit for range (up to 57344); "bfloat16" keeps a float32 model's cache in 16 bits.
KV_CACHE_DTYPES = {"auto": None, "bfloat16": torch.bfloat16, "fp8": torch.float8_e4m3fn,
                   "fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def check_kv_cache_dtype(kv_cache_dtype: str) -> None:
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise ValueError(f"kv_cache_dtype must be one of {list(KV_CACHE_DTYPES)}, got {kv_cache_dtype!r}")


def kv_cache_dtype_for(kv_cache_dtype: str, model_dtype: torch.dtype) -> torch.dtype:
    """The torch dtype of the KV cache that `kv_cache_dtype` names, for a model of `model_dtype`."""
    check_kv_cache_dtype(kv_cache_dtype)
    cache_dtype = KV_CACHE_DTYPES[kv_cache_dtype] or model_dtype
    if cache_dtype == model_dtype:
        return cache_dtype
    if cache_dtype.itemsize == 2 and model_dtype != torch.float32:
        raise ValueError(f"kv_cache_dtype {kv_cache_dtype!r}: a 16-bit cache narrows a float32 model's; this model "
                         f"runs in {str(model_dtype).removeprefix('torch.')} (use 'auto', or 'fp8')")
    return cache_dtype


def kv_bytes_per_token(config: ModelConfig, dtype: torch.dtype) -> int:
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * element


def num_blocks_for_budget(config: ModelConfig, dtype: torch.dtype, block_size: int, budget_bytes: float) -> int:
    """The number of blocks (the null block included) that fit `budget_bytes`."""
    per_block = kv_bytes_per_token(config, dtype) * block_size
    return int(budget_bytes // per_block)


def allocate_kv_caches(config: ModelConfig, dtype: torch.dtype, num_blocks: int, block_size: int,
                       device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Uninitialized caches: the kernels read only slots written before, and untouched pages of a
    CPU allocation cost no resident memory until a request fills them."""
    shape = (num_blocks, block_size, config.num_key_value_heads, config.head_dim)
    return [(torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device))
            for _ in range(config.num_hidden_layers)]
