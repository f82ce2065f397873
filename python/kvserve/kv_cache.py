"""The paged KV cache: how many blocks fit a memory budget, and the per-layer tensors.

Per layer, one key and one value tensor, the layout of vLLM v1 and flash-attn's paged API:

    key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_dim]   (model dtype)

Block 0 is the scheduler's null block (never handed to a request), so a budget of N blocks holds
N - 1 blocks of tokens.
"""

from __future__ import annotations

import torch

from kvserve.model_config import ModelConfig

# vLLM's CPU backend reserves 4 GiB for the KV cache unless told otherwise (VLLM_CPU_KVCACHE_SPACE).
DEFAULT_CPU_KV_CACHE_GB = 4.0


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
