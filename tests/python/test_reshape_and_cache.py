"""kvserve.ops.reshape_and_cache against the reference, and its errors on bad input."""

from __future__ import annotations

import pytest
import torch

from kvserve import ops
from paged_cases import NARROWER_CACHES, random_caches
from reference_attention import reference_reshape_and_cache
from requires_cuda import requires_cuda


def random_slots(num_tokens, num_blocks, block_size, dtype, seed=0):
    """Distinct random slots, every third token skipped (-1) as a padding row would be."""
    gen = torch.Generator().manual_seed(seed)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens].to(dtype)
    slots[::3] = -1
    return slots


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("block_size", [1, 16, 32])
@pytest.mark.parametrize("slot_dtype", [torch.int64, torch.int32], ids=str)
def test_matches_reference(dtype, block_size, slot_dtype):
    num_blocks, kv_heads, head_dim, num_tokens = 40 // block_size + 3, 2, 64, 30
    key_cache, value_cache = random_caches(num_blocks, block_size, kv_heads, head_dim, dtype)
    expected_k, expected_v = key_cache.clone(), value_cache.clone()
    key = torch.randn(num_tokens, kv_heads, head_dim).to(dtype)
    value = torch.randn(num_tokens, kv_heads, head_dim).to(dtype)
    slots = random_slots(num_tokens, num_blocks, block_size, slot_dtype)
    ops.reshape_and_cache(key, value, key_cache, value_cache, slots)
    reference_reshape_and_cache(key, value, expected_k, expected_v, slots)
    assert torch.equal(key_cache, expected_k) and torch.equal(value_cache, expected_v)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
@pytest.mark.parametrize("dtype, cache_dtype", NARROWER_CACHES, ids=str)
def test_narrower_caches_hold_each_value_rounded(dtype, cache_dtype, device):
    """Each element as torch rounds it to the cache's format (to nearest even); into fp8 a
    magnitude past the format's largest (infinities too) saturated to it, as vLLM's fp8 conversions
    saturate (float16 overflows to infinity, as torch's cast does). The CPU and CUDA kernels alike."""
    num_blocks, block_size, kv_heads, head_dim, num_tokens = 5, 16, 2, 64, 30
    key_cache, value_cache = random_caches(num_blocks, block_size, kv_heads, head_dim, cache_dtype)
    expected_k, expected_v = key_cache.clone(), value_cache.clone()
    gen = torch.Generator().manual_seed(1)
    # Magnitudes from the formats' subnormals to past their largest values.
    spread = torch.logspace(-12, 10, head_dim, base=4.0 if cache_dtype in (torch.float8_e5m2, torch.float16) else 2.0)
    key = (torch.randn(num_tokens, kv_heads, head_dim, generator=gen) * spread).to(dtype)
    value = (torch.randn(num_tokens, kv_heads, head_dim, generator=gen) * spread).to(dtype)
    if dtype != torch.bfloat16:  # float16 and float32 infinities; bfloat16's range is float32's
        key[1, 0, :2] = torch.tensor([float("inf"), -float("inf")])
    slots = random_slots(num_tokens, num_blocks, block_size, torch.int64)
    on_device = [x.to(device) for x in (key, value, key_cache, value_cache, slots)]
    ops.reshape_and_cache(*on_device)
    key_cache, value_cache = on_device[2].cpu(), on_device[3].cpu()
    largest = torch.finfo(cache_dtype).max if cache_dtype.itemsize == 1 else float("inf")
    rounded = [x.float().clamp(-largest, largest).to(cache_dtype) for x in (key, value)]
    reference_reshape_and_cache(*rounded, expected_k, expected_v, slots)
    assert torch.equal(key_cache.view(torch.uint8), expected_k.view(torch.uint8))
    assert torch.equal(value_cache.view(torch.uint8), expected_v.view(torch.uint8))


def test_fused_qkv_views_and_interleaved_cache():
    """K/V as strided views of a fused qkv projection, written into K/V views of one cache tensor."""
    heads, kv_heads, head_dim, block_size, num_tokens = 4, 2, 64, 16, 20
    key_cache, value_cache = random_caches(4, block_size, kv_heads, head_dim, torch.bfloat16, interleaved=True)
    whole_before = key_cache._base.clone()
    qkv = torch.randn(num_tokens, (heads + 2 * kv_heads) * head_dim).to(torch.bfloat16)
    key = qkv[:, heads * head_dim:(heads + kv_heads) * head_dim].view(-1, kv_heads, head_dim)
    value = qkv[:, (heads + kv_heads) * head_dim:].view(-1, kv_heads, head_dim)
    # Heads of one token apart in memory as well: every other head of a wider projection.
    wide = torch.randn(num_tokens, 2 * kv_heads, head_dim).to(torch.bfloat16)
    strided_value = wide[:, ::2]
    slots = random_slots(num_tokens, 4, block_size, torch.int64)
    expected = whole_before.clone()
    reference_reshape_and_cache(key, strided_value, expected[:, 0], expected[:, 1], slots)
    ops.reshape_and_cache(key, strided_value, key_cache, value_cache, slots)
    assert torch.equal(key_cache._base, expected)
    ops.reshape_and_cache(key, value, key_cache, value_cache, slots)
    reference_reshape_and_cache(key, value, expected[:, 0], expected[:, 1], slots)
    assert torch.equal(key_cache._base, expected)


def valid_args():
    key_cache, value_cache = random_caches(4, 16, 2, 64, torch.float32)
    return dict(key=torch.randn(5, 2, 64), value=torch.randn(5, 2, 64), key_cache=key_cache,
                value_cache=value_cache, slot_mapping=torch.tensor([0, 17, -1, 63, 5]))


BAD_INPUTS = {
    "slot past the end": (dict(slot_mapping=torch.tensor([0, 17, -1, 64, 5])),
                          r"slot_mapping\[3\] = 64 is out of range: expected -1 or \[0, num_blocks \* block_size = 64\)"),
    "negative slot": (dict(slot_mapping=torch.tensor([0, -2, -1, 6, 5], dtype=torch.int32)),
                      r"slot_mapping\[1\] = -2 is out of range"),
    "slot dtype": (dict(slot_mapping=torch.tensor([0, 1, 2, 3, 4], dtype=torch.int16)),
                   r"slot_mapping: expected dtype int64 or int32, got int16"),
    "slot count": (dict(slot_mapping=torch.tensor([0, 1])), r"slot_mapping: dimension 0 must be \[num_tokens\] = 5"),
    "value shape": (dict(value=torch.randn(5, 2, 32)), r"value: expected the shape of key \[5, 2, 64\], got \[5, 2, 32\]"),
    "cache heads": (dict(key_cache=torch.randn(4, 16, 1, 64), value_cache=torch.randn(4, 16, 1, 64)),
                    r"key_cache: dimension 2 must be num_kv_heads of key = 2"),
    "cache dtype": (dict(value_cache=torch.randn(4, 16, 2, 64).half()), r"value_cache: expected the dtype of key_cache"),
    "cache float64": (dict(key_cache=torch.randn(4, 16, 2, 64).double(),
                           value_cache=torch.randn(4, 16, 2, 64).double()),
                      r"key_cache: expected the dtype of key \(float32\) or float8_e4m3fn"),
    "key float64": (dict(key=torch.randn(5, 2, 64, dtype=torch.float64)), r"key: expected dtype float32 or float16"),
    "cache not contiguous": (dict(key_cache=torch.randn(4, 2, 16, 64).transpose(1, 2)),
                             r"key_cache: expected dimensions 1.. contiguous"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_value_error_and_writes_nothing(case):
    changes, message = BAD_INPUTS[case]
    args = valid_args()
    args.update(changes)
    before = args["key_cache"].clone(), args["value_cache"].clone()
    with pytest.raises(ValueError, match=message):
        ops.reshape_and_cache(**args)
    assert torch.equal(args["key_cache"], before[0]) and torch.equal(args["value_cache"], before[1])
