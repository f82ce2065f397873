"""Greedy generation with a kvserve model over a paged KV cache, driven the way the engine does it.

A stand-in for the model runner in the model tests: each step batches every request's new tokens
(a whole prompt, a prompt chunk, or one decoded token) into one forward pass, with KV blocks handed
out in a shuffled order so that block tables are not the identity.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch

from kvserve.models import AttentionMetadata


@dataclass
class _Request:
    tokens: list[int]
    prompt_len: int
    num_computed: int = 0
    blocks: list[int] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)


def allocate_kv_caches(model, num_blocks: int, block_size: int, device="cpu",
                       cache_dtype=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer: key and value caches [num_blocks, block_size, num_kv_heads, head_dim] of
    `cache_dtype` (None: the model's), filled with NaN so that reading a slot nobody wrote poisons
    the output."""
    config = model.config
    shape = (num_blocks, block_size, config.num_key_value_heads, config.head_dim)
    return [tuple(torch.full(shape, float("nan"), dtype=cache_dtype or model.dtype, device=device) for _ in range(2))
            for _ in range(config.num_hidden_layers)]


def paged_greedy(model, prompts: list[list[int]], max_new_tokens: int, *, block_size: int = 4,
                 prefill_chunk: int | None = None, seed: int = 0, device="cpu",
                 lora=None, cache_dtype=None) -> tuple[list[list[int]], list[list[torch.Tensor]]]:
    """Greedy ids [num_prompts][max_new_tokens] and, for each, the float32 logits [vocab] of every
    sampled step. `prefill_chunk` caps the prompt tokens a request computes per step. The model's
    parameters must be on `device`. `lora`: a LoRABatch every step runs with (its rows: all).
    `cache_dtype`: of the KV cache (a narrower one: fp8, or 16 bits under float32), None: the model's."""
    requests = [_Request(tokens=list(p), prompt_len=len(p)) for p in prompts]
    total_blocks = sum(math.ceil((len(p) + max_new_tokens) / block_size) for p in prompts)
    free_blocks = list(range(total_blocks))
    random.Random(seed).shuffle(free_blocks)
    kv_caches = allocate_kv_caches(model, total_blocks, block_size, device, cache_dtype)
    while any(len(r.tokens) - r.prompt_len < max_new_tokens for r in requests):
        active = [r for r in requests if len(r.tokens) - r.prompt_len < max_new_tokens]
        input_ids, positions, slots, query_start_loc, seq_lens = [], [], [], [0], []
        for r in active:
            end = len(r.tokens) if prefill_chunk is None else min(len(r.tokens), r.num_computed + prefill_chunk)
            while len(r.blocks) * block_size < end:
                r.blocks.append(free_blocks.pop())
            for pos in range(r.num_computed, end):
                input_ids.append(r.tokens[pos])
                positions.append(pos)
                slots.append(r.blocks[pos // block_size] * block_size + pos % block_size)
            query_start_loc.append(len(input_ids))
            seq_lens.append(end)
        max_blocks = max(len(r.blocks) for r in active)
        block_table = torch.tensor([r.blocks + [0] * (max_blocks - len(r.blocks)) for r in active], dtype=torch.int32)
        metadata = AttentionMetadata(slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
                                     block_table=block_table.to(device),
                                     seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
                                     query_start_loc=torch.tensor(query_start_loc, dtype=torch.int32, device=device))
        with torch.inference_mode():
            hidden = model(torch.tensor(input_ids, dtype=torch.int32, device=device),
                           torch.tensor(positions, dtype=torch.int64, device=device), kv_caches, metadata, lora)
            sampled = [i for i, r in enumerate(active) if seq_lens[i] == len(r.tokens)]
            logits = model.compute_logits(hidden[[query_start_loc[i + 1] - 1 for i in sampled]])
        for i, r in enumerate(active):
            r.num_computed = seq_lens[i]
        for row, i in enumerate(sampled):
            active[i].logits.append(logits[row].cpu())
            active[i].tokens.append(int(logits[row].argmax()))
    return [r.tokens[r.prompt_len:] for r in requests], [r.logits for r in requests]
