"""Paged attention for one layer: rotate this step's Q/K, write its K/V into the cache (one call),
attend over the cache.

Per layer, the KV cache is a pair of tensors in the model dtype:
    key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_dim]
Token t of this step goes to slot slot_mapping[t] = block_id * block_size + offset.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvserve import ops
from kvserve.models.layers.rms_norm import RMSNorm


@dataclass
class AttentionMetadata:
    """One step's batch layout, shared by every layer (views of the scheduler's arrays).

    slot_mapping:    int64 [T]                   cache slot of each new token (-1: don't write)
    block_table:     int32 [num_reqs, max_blocks] the cache blocks of each request, in order
    seq_lens:        int32 [num_reqs]            context length of each request, this step's tokens included
    query_start_loc: int32 [num_reqs + 1]        request i owns rows [query_start_loc[i], query_start_loc[i+1])
    """

    slot_mapping: torch.Tensor
    block_table: torch.Tensor
    seq_lens: torch.Tensor
    query_start_loc: torch.Tensor


class Attention:
    def __init__(self, head_dim: int, sliding_window: int | None):
        self.scale = head_dim ** -0.5
        self.sliding_window = sliding_window

    def __call__(self, out: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 cos_sin: tuple[torch.Tensor, torch.Tensor], kv_cache: tuple[torch.Tensor, torch.Tensor],
                 metadata: AttentionMetadata, head_norms: tuple[RMSNorm, RMSNorm] | None = None) -> torch.Tensor:
        """Rotates query [T, num_heads, head_dim] and key [T, num_kv_heads, head_dim] in place by
        cos_sin (rotary_embedding.py), each head normalized first by `head_norms` when given (query's
        and key's: Qwen3's, which share an eps), writes key and value [T, num_kv_heads, head_dim] into
        the cache, then the attention of query into `out` (the shape of query), which it returns. All
        three may be row-strided views of one projection."""
        key_cache, value_cache = kv_cache
        norms = {} if head_norms is None else dict(query_norm_weight=head_norms[0].weight,
                                                   key_norm_weight=head_norms[1].weight, norm_eps=head_norms[0].eps)
        ops.rotary_and_cache(query, key, value, *cos_sin, key_cache, value_cache, metadata.slot_mapping, **norms)
        return self.attend(out, query, kv_cache, metadata)

    def attend(self, out: torch.Tensor, query: torch.Tensor, kv_cache: tuple[torch.Tensor, torch.Tensor],
               metadata: AttentionMetadata) -> torch.Tensor:
        """The attention of query (rotated) over the cache, this step's keys and values in it, into
        `out`, which it returns."""
        key_cache, value_cache = kv_cache
        ops.paged_attention(out, query, key_cache, value_cache, metadata.block_table, metadata.seq_lens,
                            metadata.query_start_loc, self.scale, causal=True,
                            sliding_window=self.sliding_window, softcap=None)
        return out
