"""How many KV-cache blocks fit on the GPU: what is left of gpu_memory_utilization of its memory
once the weights are loaded and the largest step's activations have run (measured, not estimated).

The profiling step is the largest batch the scheduler can build (max_num_batched_tokens tokens,
whole prompts of up to max_model_len, over a scratch cache of one request's blocks that nothing
writes), then logits and the sampler's most expensive path (top-p over the whole vocabulary, with
logprobs) for max_num_seqs rows. The CUDA graphs are captured after the cache is allocated, in the
memory that gpu_memory_utilization leaves over.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from kvserve.kv_cache import allocate_kv_caches, kv_bytes_per_token
from kvserve.model_config import ModelConfig
from kvserve.models import AttentionMetadata
from kvserve.sampler import Sampler
from kvserve.sampling_metadata import SamplingMetadata
from kvserve.sampling_params import SamplingParams

logger = logging.getLogger("kvserve")

GIB = 2**30
# Slots are int32 in the decode graphs' inputs and the kernels' block tables.
MAX_CACHE_TOKENS = 2**31 - 1


@dataclass
class GpuMemoryPlan:
    num_blocks: int  # the scheduler's null block included
    total_bytes: int
    used_bytes: int  # by this process (weights, CUDA context, libraries) and any other, at rest
    activation_bytes: int  # the profiling step's peak above that
    cache_bytes: int


def plan_kv_cache(model: nn.Module, config: ModelConfig, cache_dtype: torch.dtype, device: torch.device, *,
                  block_size: int, max_num_batched_tokens: int, max_num_seqs: int, max_model_len: int,
                  gpu_memory_utilization: float) -> GpuMemoryPlan:
    """The KV cache's blocks (of `cache_dtype` elements) that fit what is left; logged."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    scratch = scratch_caches(config, cache_dtype, device, block_size, max_model_len)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    profile_step(model, scratch, config.vocab_size, block_size=block_size,
                 max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs, max_model_len=max_model_len)
    torch.cuda.synchronize(device)
    activation_bytes = torch.cuda.max_memory_allocated(device) - before
    del scratch
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    used = total - free
    cache_bytes = int(total * gpu_memory_utilization) - used - activation_bytes
    per_block = kv_bytes_per_token(config, cache_dtype) * block_size
    num_blocks = int(min(max(cache_bytes, 0) // per_block, MAX_CACHE_TOKENS // block_size))
    plan = GpuMemoryPlan(num_blocks, total, used, activation_bytes, num_blocks * per_block)
    logger.info("GPU memory: %.1f GiB x %.2f = %.1f GiB for %.1f GiB in use (weights, CUDA), %.2f GiB of activations "
                "and a KV cache of %d blocks, %d tokens (%.1f GiB)", total / GIB, gpu_memory_utilization,
                total * gpu_memory_utilization / GIB, used / GIB, activation_bytes / GIB, num_blocks - 1,
                (num_blocks - 1) * block_size, plan.cache_bytes / GIB)
    return plan


def scratch_caches(config: ModelConfig, dtype: torch.dtype, device: torch.device, block_size: int,
                   max_model_len: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Zeroed caches of one request's blocks (and the null block) for profile_step to read."""
    caches = allocate_kv_caches(config, dtype, math.ceil(max_model_len / block_size) + 1, block_size, device)
    for key_cache, value_cache in caches:
        key_cache.zero_()
        value_cache.zero_()
    return caches


@torch.inference_mode()
def profile_step(model: nn.Module, scratch: list[tuple[torch.Tensor, torch.Tensor]], vocab_size: int, *,
                 block_size: int, max_num_batched_tokens: int, max_num_seqs: int, max_model_len: int) -> None:
    """The largest step the scheduler can build, on the scratch caches' device: every request reads
    the same scratch blocks and writes nothing."""
    device = scratch[0][0].device
    num_tokens = min(max_num_batched_tokens, max_num_seqs * max_model_len)
    seq_len = min(max_model_len, num_tokens)
    lengths = [seq_len] * (num_tokens // seq_len) + ([num_tokens % seq_len] if num_tokens % seq_len else [])
    blocks = math.ceil(seq_len / block_size)
    metadata = AttentionMetadata(
        slot_mapping=torch.full((num_tokens,), -1, dtype=torch.int64, device=device),
        block_table=torch.arange(1, blocks + 1, dtype=torch.int32, device=device).repeat(len(lengths), 1),
        seq_lens=torch.tensor(lengths, dtype=torch.int32, device=device),
        query_start_loc=torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32).to(device),
    )
    positions = torch.cat([torch.arange(n) for n in lengths]).to(device)
    input_ids = torch.randint(0, vocab_size, (num_tokens,), dtype=torch.int32, device=device)
    hidden = model(input_ids, positions, scratch, metadata)
    if not model.has_lm_head:
        return  # a pooling engine's model: no logits, no sampler
    rows = min(max_num_seqs, num_tokens)
    logits = model.compute_logits(hidden[-rows:])
    params = [SamplingParams(temperature=1.0, top_p=0.5, logprobs=20)] * rows
    sampling = SamplingMetadata.from_requests(params, [[]] * rows, [[]] * rows, [None] * rows, vocab_size=vocab_size,
                                              device=device)
    Sampler()(logits, sampling)
