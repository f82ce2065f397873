"""The CUDA paged-attention and reshape_and_cache kernels: the CPU tests' grids against the float64
reference on the GPU, the tensor-core and portable kernels (the two-warp decode tile too), split keys,
CPU and CUDA agreeing on the same inputs, bad device metadata, a CUDA graph replayed with new
metadata, and narrower caches (kv_cache_dtype fp8; bfloat16 and float16 under float32 rows) read as
the values they hold."""

from __future__ import annotations

import pytest
import torch

from kvserve import ops
from paged_cases import NARROWER_CACHES, blocks_needed, random_caches, random_step
from reference_attention import reference_paged_attention, reference_reshape_and_cache
from requires_cuda import requires_cuda
from test_paged_attention import BATCHES, TOLERANCE, run_case

pytestmark = requires_cuda


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("block_size", [1, 16, 32])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2), (16, 2)], ids=["mha", "gqa4", "gqa8"])
@pytest.mark.parametrize("batch", list(BATCHES))
def test_matches_reference(dtype, block_size, heads, kv_heads, batch):
    run_case(dtype, block_size, heads, kv_heads, batch, device="cuda")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("batch", list(BATCHES))
def test_tensor_core_head_dims(dtype, head_dim, batch):
    run_case(dtype, 16, 8, 2, batch, head_dim=head_dim, device="cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("head_dim", [80, 96, 40, 36])
def test_portable_head_dims(dtype, head_dim):
    run_case(dtype, 16, 8, 2, "mixed", head_dim=head_dim, device="cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("batch", ["decode", "mixed", "chunked"])
@pytest.mark.parametrize("sliding_window", [1, 7, 20])
def test_sliding_window(dtype, batch, sliding_window):
    run_case(dtype, 16, 8, 2, batch, sliding_window=sliding_window, device="cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_softcap_and_non_causal(dtype):
    run_case(dtype, 16, 8, 2, "mixed", softcap=30.0, device="cuda")
    run_case(dtype, 16, 8, 2, "mixed", softcap=2.0, seed=3, device="cuda")
    run_case(dtype, 16, 8, 2, "mixed", causal=False, device="cuda")
    # 32-key stages (head_dim 256): the last rows of a 64-row tile see nothing of its first stage.
    run_case(dtype, 16, 2, 2, ([70], [70]), head_dim=256, sliding_window=7, device="cuda")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_long_contexts_split_the_keys(dtype):
    """Few requests fill few thread blocks: their keys are split across blocks and merged."""
    run_case(dtype, 16, 8, 1, ([1], [3001]), head_dim=128, device="cuda")
    run_case(dtype, 32, 4, 2, ([3, 1], [1500, 700]), sliding_window=900, device="cuda")
    run_case(dtype, 16, 32, 8, ([1], [4096]), head_dim=128, device="cuda")  # Llama-3.1-8B's heads


@pytest.mark.parametrize("num_splits", [1, 5, 64])
def test_the_caller_may_set_the_splits(num_splits):
    """num_splits overrides the launch's choice (a speed setting): the same values whatever it is."""
    run_case(torch.bfloat16, 16, 32, 8, ([1], [4096]), head_dim=128, device="cuda", num_splits=num_splits)
    run_case(torch.bfloat16, 16, 32, 8, ([1] * 64, [512] * 64), head_dim=128, device="cuda", num_splits=num_splits)
    run_case(torch.bfloat16, 16, 8, 2, "mixed", device="cuda", num_splits=num_splits)


def test_many_decodes_fill_the_gpu_unsplit():
    seq_lens = [1 + (i * 37) % 300 for i in range(600)]
    run_case(torch.bfloat16, 16, 32, 8, ([1] * 600, seq_lens), head_dim=128, device="cuda")


@pytest.mark.parametrize("warps", ["2", "auto"])
@pytest.mark.parametrize("cache_dtype", [torch.bfloat16, torch.float8_e4m3fn], ids=str)
def test_two_warp_decode_tiles(monkeypatch, warps, cache_dtype):
    """KVSERVE_DECODE_WARPS (read at each call): decode at head_dim 128 on the two-warp tile, always
    ("2") or where the four-warp tile's places run out ("auto": Llama-3.1-8B's heads at batch 128 are
    1024 blocks, more than any GPU's), against the reference; short and split contexts, windows."""
    monkeypatch.setenv("KVSERVE_DECODE_WARPS", warps)
    for dtype in (torch.bfloat16, torch.float16):
        cache = cache_dtype if cache_dtype != torch.bfloat16 else None
        run_case(dtype, 16, 32, 8, ([1] * 128, [1 + (i * 37) % 600 for i in range(128)]), head_dim=128,
                 device="cuda", cache_dtype=cache)
        run_case(dtype, 16, 32, 8, ([1], [4096]), head_dim=128, device="cuda", cache_dtype=cache)
        run_case(dtype, 16, 8, 2, "decode", head_dim=128, sliding_window=7, softcap=2.0, device="cuda",
                 cache_dtype=cache)


@pytest.mark.parametrize("dtype, cache_dtype", [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32),
                                                (torch.bfloat16, torch.float8_e4m3fn)], ids=str)
def test_cpu_and_cuda_kernels_agree(dtype, cache_dtype):
    head_dim, block_size = 128, 16
    new_tokens, seq_lens = [1, 40, 1, 7], [300, 40, 9, 77]
    num_blocks = blocks_needed(seq_lens, block_size) + 2
    key_cache, value_cache = random_caches(num_blocks, block_size, 2, head_dim, cache_dtype, seed=5)
    step = random_step(new_tokens, seq_lens, block_size, num_blocks, seed=5)
    query = torch.randn(step.num_tokens, 8, head_dim, generator=torch.Generator().manual_seed(6)).to(dtype)
    arrays = (query, key_cache, value_cache, step.block_table, step.seq_lens, step.query_start_loc)
    cpu_out = torch.full_like(query, float("nan"))
    ops.paged_attention(cpu_out, *arrays, head_dim ** -0.5)
    cuda_out = torch.full_like(query, float("nan")).cuda()
    ops.paged_attention(cuda_out, *[a.cuda() for a in arrays], head_dim ** -0.5)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(cuda_out.cpu().float(), cpu_out.float(), rtol=tol, atol=tol)


def test_fused_qkv_views_and_interleaved_cache():
    heads, kv_heads, head_dim, block_size = 8, 2, 64, 16
    new_tokens, seq_lens = BATCHES["mixed"]
    num_blocks = blocks_needed(seq_lens, block_size) + 2
    key_cache, value_cache = random_caches(num_blocks, block_size, kv_heads, head_dim, torch.bfloat16,
                                           interleaved=True)
    step = random_step(new_tokens, seq_lens, block_size, num_blocks, spare_columns=3)
    qkv = torch.randn(step.num_tokens, (heads + 2 * kv_heads) * head_dim).to(torch.bfloat16)
    query = qkv[:, :heads * head_dim].view(-1, heads, head_dim)
    args = (key_cache, value_cache, step.block_table[:, :-3], step.seq_lens, step.query_start_loc, 0.125)
    wide_out = torch.full((step.num_tokens, heads + 1, head_dim), float("nan"), dtype=torch.bfloat16).cuda()
    cuda_args = [a.cuda() if isinstance(a, torch.Tensor) else a for a in args]
    ops.paged_attention(wide_out[:, 1:], qkv.cuda()[:, :heads * head_dim].view(-1, heads, head_dim), *cuda_args)
    expected = reference_paged_attention(query, *args)
    torch.testing.assert_close(wide_out[:, 1:].cpu().double(), expected, rtol=1e-2, atol=1e-2)
    assert wide_out[:, 0].isnan().all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_bad_device_metadata_poisons_its_rows(dtype):
    """The host never reads device metadata: a bad block id or seq_len comes out as NaN rows of its
    request, and the other requests are unharmed."""
    new_tokens, seq_lens = BATCHES["mixed"]
    num_blocks = blocks_needed(seq_lens, 16) + 3
    key_cache, value_cache = random_caches(num_blocks, 16, 2, 64, dtype)
    step = random_step(new_tokens, seq_lens, 16, num_blocks)
    query = torch.randn(step.num_tokens, 8, 64).to(dtype)
    block_table, bad_lens = step.block_table.clone(), step.seq_lens.clone()
    block_table[1, 0] = num_blocks            # request 1: a block out of range
    bad_lens[3] = block_table.shape[1] * 16 + 1  # request 3: longer than its block table
    out = torch.full_like(query, float("nan")).cuda()
    ops.paged_attention(out, query.cuda(), key_cache.cuda(), value_cache.cuda(), block_table.cuda(), bad_lens.cuda(),
                        step.query_start_loc.cuda(), 0.125)
    expected = reference_paged_attention(query, key_cache, value_cache, step.block_table, step.seq_lens,
                                         step.query_start_loc, 0.125)
    qsl = step.query_start_loc.tolist()
    poisoned = list(range(qsl[1], qsl[2])) + list(range(qsl[3], qsl[4]))
    healthy = [t for t in range(step.num_tokens) if t not in poisoned]
    assert out[poisoned].isnan().all()
    torch.testing.assert_close(out[healthy].cpu().double(), expected[healthy], rtol=TOLERANCE[dtype],
                               atol=TOLERANCE[dtype])


@pytest.mark.parametrize("cache_dtype", [torch.bfloat16, torch.float8_e4m3fn], ids=str)
def test_cuda_graph_replays_with_new_metadata(cache_dtype):
    """Captured once, replayed after the metadata buffers were refilled for another batch: the
    launch reads nothing of the metadata on the host."""
    block_size, kv_heads, heads, head_dim, max_blocks = 16, 2, 8, 128, 8
    num_blocks = 4 * max_blocks
    key_cache, value_cache = (c.cuda() for c in random_caches(num_blocks, block_size, kv_heads, head_dim,
                                                             cache_dtype))
    batch = 4
    query = torch.empty(batch, heads, head_dim, dtype=torch.bfloat16, device="cuda")
    out = torch.empty_like(query)
    block_table = torch.zeros(batch, max_blocks, dtype=torch.int32, device="cuda")
    seq_lens = torch.ones(batch, dtype=torch.int32, device="cuda")
    query_start_loc = torch.arange(batch + 1, dtype=torch.int32, device="cuda")

    def fill(lengths, seed):
        step = random_step([1] * batch, lengths, block_size, num_blocks, seed=seed)
        block_table.zero_()
        block_table[:, :step.block_table.shape[1]] = step.block_table.cuda()
        seq_lens.copy_(step.seq_lens)
        query.copy_(torch.randn(batch, heads, head_dim, generator=torch.Generator().manual_seed(seed)))
        return step

    fill([3, 17, 40, 100], seed=1)
    args = (out, query, key_cache, value_cache, block_table, seq_lens, query_start_loc, head_dim ** -0.5)
    ops.paged_attention(*args)  # outside the capture first, as the runner does
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ops.paged_attention(*args)
    for seed, lengths in [(2, [128, 1, 77, 9]), (3, [5, 6, 7, 8])]:
        step = fill(lengths, seed)
        out.fill_(float("nan"))
        graph.replay()
        expected = reference_paged_attention(query.cpu(), key_cache.cpu(), value_cache.cpu(), step.block_table,
                                             step.seq_lens, step.query_start_loc, head_dim ** -0.5)
        torch.testing.assert_close(out.cpu().double(), expected, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("slot_dtype", [torch.int64, torch.int32], ids=str)
def test_reshape_and_cache_matches_reference(dtype, slot_dtype):
    num_blocks, block_size, kv_heads, head_dim, num_tokens = 6, 16, 2, 64, 30
    key_cache, value_cache = random_caches(num_blocks, block_size, kv_heads, head_dim, dtype)
    kv = torch.randn(num_tokens, 3 * kv_heads * head_dim).to(dtype)  # fused rows: k and v are strided views
    key = kv[:, :kv_heads * head_dim].view(num_tokens, kv_heads, head_dim)
    value = kv[:, kv_heads * head_dim:2 * kv_heads * head_dim].view(num_tokens, kv_heads, head_dim)
    slots = torch.randperm(num_blocks * block_size, generator=torch.Generator().manual_seed(0))[:num_tokens]
    slots = slots.to(slot_dtype)
    slots[::3] = -1
    expected_k, expected_v = key_cache.clone(), value_cache.clone()
    reference_reshape_and_cache(key, value, expected_k, expected_v, slots)
    cuda_k, cuda_v = key_cache.cuda(), value_cache.cuda()
    cuda_kv = kv.cuda()
    ops.reshape_and_cache(cuda_kv[:, :kv_heads * head_dim].view(num_tokens, kv_heads, head_dim),
                          cuda_kv[:, kv_heads * head_dim:2 * kv_heads * head_dim].view(num_tokens, kv_heads, head_dim),
                          cuda_k, cuda_v, slots.cuda())
    assert torch.equal(cuda_k.cpu(), expected_k) and torch.equal(cuda_v.cpu(), expected_v)


def test_reshape_and_cache_skips_a_slot_out_of_range():
    key_cache, value_cache = (c.cuda() for c in random_caches(2, 4, 1, 8, torch.float32))
    before = key_cache.clone()
    key = torch.randn(2, 1, 8, device="cuda")
    ops.reshape_and_cache(key, key, key_cache, value_cache, torch.tensor([3, 8], device="cuda"))
    assert torch.equal(key_cache[0, 3], key[0]) and torch.equal(key_cache[1], before[1])


@pytest.mark.parametrize("dtype, cache_dtype", NARROWER_CACHES, ids=str)
@pytest.mark.parametrize("head_dim", [64, 128, 256, 80])
@pytest.mark.parametrize("batch", list(BATCHES))
def test_narrower_caches(dtype, cache_dtype, head_dim, batch):
    """fp8 caches under 16-bit rows on tensor cores (each stage widened in shared memory; head_dim 80:
    the portable kernel), and every narrower cache under float32 rows on the portable kernel: the
    reference over the same elements."""
    run_case(dtype, 16, 8, 2, batch, head_dim=head_dim, cache_dtype=cache_dtype, device="cuda")


@pytest.mark.parametrize("cache_dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=str)
def test_fp8_caches_split_the_keys(cache_dtype):
    run_case(torch.bfloat16, 16, 32, 8, ([1], [4096]), head_dim=128, cache_dtype=cache_dtype, device="cuda")
    run_case(torch.float16, 32, 4, 2, ([3, 1], [1500, 700]), sliding_window=900, cache_dtype=cache_dtype,
             device="cuda")
    run_case(torch.bfloat16, 16, 8, 2, ([40], [1500]), head_dim=128, cache_dtype=cache_dtype, device="cuda")
