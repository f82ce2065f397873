"""Plain-torch references for the paged KV-cache kernels, in float64.

Slow and obvious on purpose: the kernels in kvserve.ops are tested against these on random data.

    key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_dim]
    block_table:            [num_reqs, max_blocks_per_req] int32
    seq_lens:               [num_reqs] int32, context length including this step's tokens
    query_start_loc:        [num_reqs + 1] int32, request i owns query rows [qsl[i], qsl[i+1])
"""

from __future__ import annotations

import math

import torch


def reference_reshape_and_cache(key, value, key_cache, value_cache, slot_mapping) -> None:
    """Write token t's K/V into slot slot_mapping[t] (= block * block_size + offset); -1 skips."""
    block_size = key_cache.shape[1]
    for t, slot in enumerate(slot_mapping.tolist()):
        if slot < 0:
            continue
        key_cache[slot // block_size, slot % block_size] = key[t]
        value_cache[slot // block_size, slot % block_size] = value[t]


def gather_context(cache, block_table_row, seq_len) -> torch.Tensor:
    """The first seq_len cached positions of one request: [seq_len, num_kv_heads, head_dim]."""
    block_size = cache.shape[1]
    num_blocks = math.ceil(seq_len / block_size)
    blocks = cache[block_table_row[:num_blocks].long()]
    return blocks.reshape(-1, *cache.shape[2:])[:seq_len]


def reference_paged_attention(query, key_cache, value_cache, block_table, seq_lens, query_start_loc,
                              scale, causal=True, sliding_window=None, softcap=None) -> torch.Tensor:
    """Attention of every query row over its request's paged context, in float64.

    Query row j of request i sits at position seq_lens[i] - num_queries_i + j. With `causal` it sees
    positions <= its own; `sliding_window` W keeps only positions > own - W; `softcap` c maps each
    scaled score s to c * tanh(s / c). Returns [num_tokens, num_heads, head_dim] float64.
    """
    num_heads = query.shape[1]
    num_kv_heads = key_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.empty(query.shape, dtype=torch.float64)
    qsl = query_start_loc.tolist()
    for i, seq_len in enumerate(seq_lens.tolist()):
        q = query[qsl[i]:qsl[i + 1]].double()                      # [nq, H, D]
        k = gather_context(key_cache, block_table[i], seq_len).double()    # [L, Hkv, D]
        v = gather_context(value_cache, block_table[i], seq_len).double()
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) * scale
        if softcap is not None:
            scores = softcap * torch.tanh(scores / softcap)
        q_pos = torch.arange(seq_len - q.shape[0], seq_len).unsqueeze(1)
        k_pos = torch.arange(seq_len).unsqueeze(0)
        allowed = torch.ones(q.shape[0], seq_len, dtype=torch.bool)
        if causal:
            allowed &= k_pos <= q_pos
        if sliding_window is not None:
            allowed &= k_pos > q_pos - sliding_window
        scores = scores.masked_fill(~allowed, float("-inf"))
        out[qsl[i]:qsl[i + 1]] = torch.einsum("hqk,khd->qhd", torch.softmax(scores, dim=-1), v)
    return out
