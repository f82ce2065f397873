"""kvserve.ops.paged_attention against the float64 reference, and its errors on bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from isa_paths import ISAS, run_tests_under_isa
from kvserve import _C, ops
from paged_cases import NARROWER_CACHES, blocks_needed, random_caches, random_step
from reference_attention import reference_paged_attention

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}

# (new tokens per request, context lengths): decode, prefill, chunked prefill, and mixes of them,
# with lengths that start, end and cross block boundaries.
BATCHES = {
    "decode": ([1, 1, 1, 1], [1, 16, 33, 70]),
    "prefill": ([17, 40], [17, 40]),
    "chunked": ([9, 12], [41, 75]),
    "mixed": ([1, 23, 1, 5], [50, 23, 9, 37]),
}


def run_case(dtype, block_size, heads, kv_heads, batch, head_dim=64, causal=True, sliding_window=None,
             softcap=None, seed=0, device="cpu", num_splits=None, cache_dtype=None):
    new_tokens, seq_lens = BATCHES[batch] if isinstance(batch, str) else batch
    num_blocks = blocks_needed(seq_lens, block_size) + 3
    key_cache, value_cache = random_caches(num_blocks, block_size, kv_heads, head_dim, cache_dtype or dtype,
                                           seed=seed)
    step = random_step(new_tokens, seq_lens, block_size, num_blocks, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    query = torch.randn(step.num_tokens, heads, head_dim, generator=gen).to(dtype)
    arrays = (query, key_cache, value_cache, step.block_table, step.seq_lens, step.query_start_loc)
    scalars = (head_dim ** -0.5, causal, sliding_window, softcap)
    on_device = [a.to(device) for a in arrays]
    out = torch.full_like(on_device[0], float("nan"))  # poisoned: a row the kernel skips stays NaN
    ops.paged_attention(out, *on_device, *scalars, num_splits=num_splits)
    expected = reference_paged_attention(*arrays, *scalars)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out.cpu().double(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("block_size", [1, 16, 32])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2), (16, 2)], ids=["mha", "gqa4", "gqa8"])
@pytest.mark.parametrize("batch", list(BATCHES))
def test_matches_reference(dtype, block_size, heads, kv_heads, batch):
    run_case(dtype, block_size, heads, kv_heads, batch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("head_dim", [80, 96, 128, 256, 40, 36])
def test_head_dims(dtype, head_dim):
    run_case(dtype, 16, 8, 2, "mixed", head_dim=head_dim)


@pytest.mark.parametrize("dtype, cache_dtype", NARROWER_CACHES, ids=str)
@pytest.mark.parametrize("batch", list(BATCHES))
@pytest.mark.parametrize("head_dim", [64, 128, 36])
def test_narrower_caches(dtype, cache_dtype, batch, head_dim):
    """A cache narrower than the queries (fp8; 16 bits for float32) is read as the values its
    elements stand for: the reference over the same elements (on CUDA: test_cuda_paged_attention)."""
    run_case(dtype, 16, 8, 2, batch, head_dim=head_dim, cache_dtype=cache_dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("batch", ["decode", "mixed", "chunked"])
@pytest.mark.parametrize("sliding_window", [1, 7, 20])
def test_sliding_window(dtype, batch, sliding_window):
    run_case(dtype, 16, 8, 2, batch, sliding_window=sliding_window)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_softcap_and_non_causal(dtype):
    run_case(dtype, 16, 8, 2, "mixed", softcap=30.0)
    run_case(dtype, 16, 8, 2, "mixed", softcap=2.0, seed=3)
    run_case(dtype, 16, 8, 2, "mixed", causal=False)


@pytest.fixture
def four_threads():
    """Enough threads that a lone long request is split across them (and merged)."""
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_long_context_split_across_threads(four_threads, dtype):
    run_case(dtype, 16, 8, 1, ([1], [3001]))
    run_case(dtype, 32, 4, 2, ([3, 1], [1500, 700]), sliding_window=900)


def test_fused_qkv_views_and_interleaved_cache():
    """query/out as strided views (a fused qkv projection), K/V as views of one cache tensor, a
    block table sliced from a wider one: the kernel reads the strides, no copies needed."""
    heads, kv_heads, head_dim, block_size = 8, 2, 64, 16
    new_tokens, seq_lens = BATCHES["mixed"]
    num_blocks = blocks_needed(seq_lens, block_size) + 2
    key_cache, value_cache = random_caches(num_blocks, block_size, kv_heads, head_dim, torch.float32,
                                           interleaved=True)
    assert not key_cache.is_contiguous()
    step = random_step(new_tokens, seq_lens, block_size, num_blocks, spare_columns=3)
    block_table = step.block_table[:, :-3]
    assert not block_table.is_contiguous()
    qkv = torch.randn(step.num_tokens, (heads + 2 * kv_heads) * head_dim)
    query = qkv[:, :heads * head_dim].view(-1, heads, head_dim)
    wide_out = torch.full((step.num_tokens, heads + 1, head_dim), float("nan"))
    out = wide_out[:, 1:]
    args = (key_cache, value_cache, block_table, step.seq_lens, step.query_start_loc, 0.125)
    ops.paged_attention(out, query, *args)
    torch.testing.assert_close(out.double(), reference_paged_attention(query, *args), rtol=1e-5, atol=1e-5)
    assert wide_out[:, 0].isnan().all()  # nothing outside the view was written


def test_numpy_arrays():
    key_cache, value_cache = random_caches(6, 16, 2, 64, torch.float32)
    step = random_step([2, 1], [20, 30], 16, 6)
    query = torch.randn(3, 4, 64)
    out = np.full((3, 4, 64), np.nan, dtype=np.float32)
    ops.paged_attention(out, query.numpy(), key_cache.numpy(), value_cache.numpy(), step.block_table.numpy(),
                        step.seq_lens.numpy(), step.query_start_loc.numpy(), 0.125)
    expected = reference_paged_attention(query, key_cache, value_cache, step.block_table, step.seq_lens,
                                         step.query_start_loc, 0.125)
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-5, atol=1e-5)


ISA_SUBSET = ("test_matches_reference and mixed or test_head_dims or test_sliding_window and decode or "
              "test_narrower_caches and mixed")


@pytest.mark.parametrize("isa", ISAS)
def test_every_isa_path(isa):
    """The paths a CPU without AVX-512 (or without x86) would take, forced by KVSERVE_CPU_ISA."""
    run_tests_under_isa(isa, __file__, ISA_SUBSET)


# ---- bad input: a clear ValueError/TypeError, never a crash ----

def valid_args(dtype=torch.float32):
    key_cache, value_cache = random_caches(8, 16, 2, 64, dtype)
    step = random_step([2, 1], [20, 30], 16, 8)
    query = torch.randn(3, 4, 64).to(dtype)
    return dict(out=torch.full_like(query, float("nan")), query=query, key_cache=key_cache, value_cache=value_cache,
                block_table=step.block_table, seq_lens=step.seq_lens, query_start_loc=step.query_start_loc,
                scale=0.125)


BAD_INPUTS = {
    "query float64": (dict(query=torch.randn(3, 4, 64, dtype=torch.float64)),
                      r"query: expected dtype float32 or float16 or bfloat16, got float64"),
    "out dtype": (dict(out=torch.full((3, 4, 64), float("nan"), dtype=torch.bfloat16)),
                  r"out: expected the dtype of query"),
    "cache dtype": (dict(key_cache=torch.randn(8, 16, 2, 64, dtype=torch.float16)),
                    r"value_cache: expected the dtype of key_cache \(float16\), got float32"),
    "cache wider than the queries": (
        dict(query=torch.randn(3, 4, 64).half(), out=torch.full((3, 4, 64), float("nan")).half()),
        r"key_cache: expected the dtype of query \(float16\) or float8_e4m3fn or float8_e5m2 \(or for float32 rows "
        r"float16 or bfloat16\), got float32"),
    "fp8 caches of two kinds": (dict(key_cache=torch.randn(8, 16, 2, 64).to(torch.float8_e4m3fn),
                                     value_cache=torch.randn(8, 16, 2, 64).to(torch.float8_e5m2)),
                                r"value_cache: expected the dtype of key_cache"),
    "int8 cache": (dict(key_cache=torch.zeros(8, 16, 2, 64, dtype=torch.int8)),
                   r"key_cache: expected the dtype of query \(float32\) or float8_e4m3fn or float8_e5m2 .*, got int8"),
    "head_dim": (dict(query=torch.randn(3, 4, 32), out=torch.full((3, 4, 32), float("nan"))),
                 r"key_cache: dimension 3 must be head_dim of query = 32"),
    "heads not a multiple": (dict(query=torch.randn(3, 3, 64), out=torch.full((3, 3, 64), float("nan"))),
                             r"num_heads 3 is not a multiple of num_kv_heads 2"),
    "query 2-D": (dict(query=torch.randn(3, 256)), r"query: expected 3 dimensions"),
    "query last dim strided": (dict(query=torch.randn(3, 4, 128)[:, :, ::2]), r"query: expected dimensions 2.. contiguous"),
    "value_cache shape": (dict(value_cache=torch.randn(7, 16, 2, 64)), r"value_cache: expected the shape of key_cache"),
    "block_table int64": (dict(block_table=torch.zeros(2, 2, dtype=torch.int64)), r"block_table: expected dtype int32"),
    "seq_lens length": (dict(seq_lens=torch.tensor([20], dtype=torch.int32)), r"seq_lens: dimension 0 must be"),
    "qsl length": (dict(query_start_loc=torch.tensor([0, 3], dtype=torch.int32)), r"query_start_loc: dimension 0"),
    "block id": (dict(block_table=torch.tensor([[0, 1], [2, 8]], dtype=torch.int32)),
                 r"block_table\[1\]\[1\] = 8 is out of range \[0, 8\)"),
    "negative block id": (dict(block_table=torch.tensor([[0, -1], [2, 3]], dtype=torch.int32)),
                          r"block_table\[0\]\[1\] = -1 is out of range"),
    "context beyond table": (dict(seq_lens=torch.tensor([20, 33], dtype=torch.int32)),
                             r"seq_lens\[1\] = 33 exceeds max_blocks_per_req \* block_size = 32"),
    "context shorter than query": (dict(seq_lens=torch.tensor([1, 30], dtype=torch.int32)),
                                   r"seq_lens\[0\] = 1 is less than the request's 2 query tokens"),
    "qsl not ending at num_tokens": (dict(query_start_loc=torch.tensor([0, 2, 2], dtype=torch.int32)),
                                     r"query_start_loc\[2\] = 2: expected num_tokens = 3"),
    "qsl decreasing": (dict(query_start_loc=torch.tensor([0, 4, 3], dtype=torch.int32)),
                       r"query_start_loc\[2\] = 3 is less than query_start_loc\[1\] = 4"),
    "qsl not from 0": (dict(query_start_loc=torch.tensor([1, 2, 3], dtype=torch.int32)), r"query_start_loc\[0\] = 1"),
    "sliding_window 0": (dict(sliding_window=0), r"sliding_window: expected >= 1 or None, got 0"),
    "num_splits 0": (dict(num_splits=0), r"num_splits: expected >= 1 or None, got 0"),
    "softcap negative": (dict(softcap=-1.0), r"softcap: expected a finite number > 0"),
    "scale nan": (dict(scale=float("nan")), r"scale: expected a finite number"),
}


def test_the_cpu_kernel_ignores_num_splits():
    args = valid_args()
    ops.paged_attention(**args)
    expected = args["out"].clone()
    ops.paged_attention(**dict(args, num_splits=4))
    assert torch.equal(args["out"], expected)


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_value_error(case):
    changes, message = BAD_INPUTS[case]
    args = valid_args()
    args.update(changes)
    with pytest.raises(ValueError, match=message):
        ops.paged_attention(**args)
    assert args["out"].isnan().all()  # rejected before anything was written


def test_not_an_array_or_wrong_device_raises():
    args = valid_args()
    with pytest.raises(TypeError):
        ops.paged_attention(**{**args, "seq_lens": [20, 30]})
    with pytest.raises(TypeError):  # no memory to share
        ops.paged_attention(**{**args, "query": torch.empty(3, 4, 64, device="meta")})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_arrays_on_two_devices_are_rejected():
    args = valid_args()
    with pytest.raises(ValueError, match=r"out is on cpu but query is on cuda:0: both must be on one device"):
        ops.paged_attention(**{**args, "query": args["query"].cuda()})
    cuda_args = {name: value.cuda() if isinstance(value, torch.Tensor) else value for name, value in args.items()}
    with pytest.raises(ValueError, match=r"seq_lens is on cpu but query is on cuda:0"):
        ops.paged_attention(**{**cuda_args, "seq_lens": args["seq_lens"]})


def test_cpu_isa_is_reported():
    assert _C.ops.cpu_isa() in {"portable", "avx2", "avx512", "avx512_bf16"}
