"""Random paged KV-cache batches for the kernel tests: caches, block tables and step metadata.

Block ids are shuffled so that a kernel reading the wrong block cannot pass by luck; data is
normal random (never zeros).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# (rows' dtype, a narrower cache's): kv_cache_dtype fp8 under every model dtype, and 16-bit caches
# under float32 models.
NARROWER_CACHES = [(dtype, fp8) for dtype in (torch.float32, torch.bfloat16, torch.float16)
                   for fp8 in (torch.float8_e4m3fn, torch.float8_e5m2)]
NARROWER_CACHES += [(torch.float32, torch.bfloat16), (torch.float32, torch.float16)]


def random_caches(num_blocks, block_size, kv_heads, head_dim, dtype, interleaved=False, seed=0):
    """(key_cache, value_cache), each [num_blocks, block_size, kv_heads, head_dim]. `interleaved`
    gives K and V as views of one [num_blocks, 2, block_size, ...] tensor (strided blocks)."""
    gen = torch.Generator().manual_seed(seed)
    if interleaved:
        both = torch.randn(num_blocks, 2, block_size, kv_heads, head_dim, generator=gen).to(dtype)
        return both[:, 0], both[:, 1]
    shape = (num_blocks, block_size, kv_heads, head_dim)
    return (torch.randn(shape, generator=gen).to(dtype), torch.randn(shape, generator=gen).to(dtype))


@dataclass
class Step:
    """One engine step: request i has new_tokens[i] query rows and a context of seq_lens[i]."""

    block_table: torch.Tensor      # [num_reqs, max_blocks_per_req] int32
    seq_lens: torch.Tensor         # [num_reqs] int32
    query_start_loc: torch.Tensor  # [num_reqs + 1] int32
    num_tokens: int


def random_step(new_tokens, seq_lens, block_size, num_blocks, spare_columns=0, seed=0) -> Step:
    """Metadata for requests with distinct random blocks; `spare_columns` widens the block table
    with ids past the used ones (out of range, so a kernel that reads too far fails)."""
    gen = torch.Generator().manual_seed(seed)
    per_req = [math.ceil(n / block_size) for n in seq_lens]
    width = max(per_req) + spare_columns
    assert sum(per_req) <= num_blocks
    ids = torch.randperm(num_blocks, generator=gen).int()
    table = torch.full((len(seq_lens), width), num_blocks + 1000, dtype=torch.int32)
    used = 0
    for i, n in enumerate(per_req):
        table[i, :n] = ids[used:used + n]
        used += n
    qsl = torch.zeros(len(new_tokens) + 1, dtype=torch.int32)
    qsl[1:] = torch.cumsum(torch.tensor(new_tokens), 0)
    return Step(table, torch.tensor(seq_lens, dtype=torch.int32), qsl, int(qsl[-1]))


def blocks_needed(seq_lens, block_size) -> int:
    return sum(math.ceil(n / block_size) for n in seq_lens)
