"""The few-rows linear (kvserve.ops.linear) on the CPU and on CUDA against float64, and its CUDA
fusions against the ops they replace: SiLU-and-mul into the gate_up product, rotary and the KV-cache
write into the qkv product, bit for bit."""

import pytest
import torch

from isa_paths import ISAS, run_tests_under_isa
from kvserve import ops
from requires_cuda import requires_cuda
from test_layer_ops import DTYPES, qkv_views


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(1, 4, 2, 64), (3, 32, 8, 128), (8, 8, 1, 256)])
def test_linear_rotary_and_cache_gives_the_two_ops_bits(dtype, shape):
    """The qkv projection that rotates q and k and writes the cache itself equals linear, then
    rotary_and_cache, bit for bit: q, k, v and both caches (bias or not; a -1 slot writes nothing)."""
    tokens, heads, kv_heads, head_dim = shape
    torch.manual_seed(tokens * 100 + head_dim)
    hidden, blocks, block_size = 512, 4, 4
    x = torch.randn(tokens, hidden).to(dtype).cuda()
    width = (heads + 2 * kv_heads) * head_dim
    weight = (0.1 * torch.randn(width, hidden)).to(dtype).cuda()
    angles = torch.rand(tokens, head_dim // 2) * 100
    cos, sin = angles.cos().to(dtype).cuda(), angles.sin().to(dtype).cuda()
    slots = torch.tensor([3, -1, 0, 12, 9, 1, 2, 15][:tokens], device="cuda")
    for bias in (None, torch.randn(width).to(dtype).cuda()):
        results = []
        for fuse in (False, True):
            qkv = torch.full((tokens, width), float("nan"), dtype=dtype, device="cuda")
            q, k, v = qkv_views(qkv, heads, kv_heads, head_dim)
            caches = [torch.full((blocks, block_size, kv_heads, head_dim), float("nan"), dtype=dtype, device="cuda")
                      for _ in range(2)]
            if fuse:
                ops.linear_rotary_and_cache(qkv, x, weight, bias, q, k, v, cos, sin, *caches, slots)
            else:
                ops.linear(qkv, x, weight, bias)
                ops.rotary_and_cache(q, k, v, cos, sin, *caches, slots)
            results.append((qkv, *caches))
        for apart, fused in zip(*results):
            assert torch.equal(apart.isnan(), fused.isnan()) and torch.equal(apart.nan_to_num(), fused.nan_to_num())
        assert results[1][0].isfinite().all()


@pytest.mark.parametrize("tokens", [1, 3])
def test_linear_rotary_and_cache_takes_torchs_views_and_runs_on_cuda_only(tokens):
    """The views a model takes of the product (torch packs a one-token view's token stride, and a
    one-head view's head stride) pass the layout check, which runs before the device's; other
    columns do not."""
    heads, kv_heads, head_dim = 2, 1, 16
    qkv = torch.empty(tokens, (heads + 2 * kv_heads) * head_dim, dtype=torch.bfloat16)
    q, k, v = qkv_views(qkv, heads, kv_heads, head_dim)
    cos = sin = torch.ones(tokens, head_dim // 2, dtype=torch.bfloat16)
    caches = [torch.empty(2, 4, kv_heads, head_dim, dtype=torch.bfloat16) for _ in range(2)]
    x, weight = torch.randn(tokens, 32).bfloat16(), torch.randn(qkv.shape[1], 32).bfloat16()
    slots = torch.arange(tokens)
    with pytest.raises(ValueError, match=r"linear_rotary_and_cache runs on CUDA only"):
        ops.linear_rotary_and_cache(qkv, x, weight, None, q, k, v, cos, sin, *caches, slots)
    with pytest.raises(ValueError, match=r"expected the q, k and v columns of linear.out"):
        ops.linear_rotary_and_cache(qkv, x, weight, None, q, v, k, cos, sin, *caches, slots)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows", [1, 3, 4, 7, 70])
@pytest.mark.parametrize("shape", [(6, 40), (64, 256), (33, 100), (9, 4864)])
def test_linear(dtype, rows, shape):
    """Against float64 on random data; output features and input features that are and are not
    multiples of the kernel's blocks, input rows that cross the kernel's row tiles (64 rows, fewer
    for long rows); with and without bias."""
    torch.manual_seed(rows * 1000 + shape[0])
    out_features, in_features = shape
    x = torch.randn(rows, in_features).to(dtype)
    weight = (0.2 * torch.randn(out_features, in_features)).to(dtype)
    bias = torch.randn(out_features).to(dtype)
    for b in (None, bias):
        out = torch.full((rows, out_features), float("nan"), dtype=dtype)
        ops.linear(out, x, weight, b)
        expected = x.double() @ weight.double().t() + (0 if b is None else b.double())
        if dtype != torch.float32:  # the 16-bit output's rounding dominates
            torch.testing.assert_close(out.double(), expected, rtol=1e-2, atol=1e-2)
            continue
        # Float32 sums in whatever order an ISA's path takes: each rounding within 2^-24 of the
        # running sum, K of them with random signs, so a few sqrt(K) roundings of sum |x w| (the
        # paths measured up to a third of this bound; one dropped or doubled term is K / sqrt(K)
        # times larger). Relative to the result alone, cancellation makes it unbounded.
        magnitude = x.double().abs() @ weight.double().abs().t() + (0 if b is None else b.double().abs())
        bound = 2.0 ** -23 * in_features ** 0.5 * magnitude
        assert ((out.double() - expected).abs() <= bound).all(), ((out.double() - expected).abs() / bound).max()


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("shape", [(48, 512), (40, 200), (17, 1032), (6144, 4096)])
def test_linear_cuda(dtype, rows, shape):
    """The tensor-core kernel for up to 8 rows against float64: output features past its 16-row
    blocks, input features past its 32-column steps, a decode projection's shape; bias or not."""
    torch.manual_seed(rows * 1000 + shape[0])
    out_features, in_features = shape
    x = torch.randn(rows, in_features).to(dtype).cuda()
    weight = (0.2 * torch.randn(out_features, in_features)).to(dtype).cuda()
    bias = torch.randn(out_features).to(dtype).cuda()
    for b in (None, bias):
        out = torch.full((rows, out_features), float("nan"), dtype=dtype, device="cuda")
        ops.linear(out, x, weight, b)
        expected = x.double() @ weight.double().t() + (0 if b is None else b.double())
        torch.testing.assert_close(out.double(), expected, rtol=1e-2, atol=1e-2)


def test_linear_cuda_takes_says_which_layouts_the_cuda_kernels_take():
    """linear_cuda_takes (the layout alone, so any device's arrays): up to 8 rows over a 16-bit weight;
    over codes up to 32 rows in 16-byte packs of in_features with rows a lane's load apart (4 bytes of
    uint4 codes, 8 of int8), past 32 rows whole stages of 32 columns with code rows 16 bytes apart
    (but not for the few-rows kernel alone)."""
    from kvserve import _C

    def takes(x, w, silu=False, few_rows_only=False):
        return _C.ops.linear_cuda_takes(ops._dl(x), ops._dl(w), silu, few_rows_only)

    weight = torch.randn(64, 256, dtype=torch.bfloat16)
    assert takes(torch.randn(8, 256, dtype=torch.bfloat16), weight)
    assert not takes(torch.randn(9, 256, dtype=torch.bfloat16), weight)
    assert not takes(torch.randn(8, 256), weight.float())
    assert not takes(torch.randn(2, 260).bfloat16()[:, 2:258], weight)
    assert not takes(torch.randn(8, 256, dtype=torch.float16), weight)
    uint4 = torch.randint(0, 256, (64, 128), dtype=torch.uint8)
    for rows in (1, 32, 33, 1000):
        assert takes(torch.randn(rows, 256, dtype=torch.bfloat16), uint4)
        assert takes(torch.randn(rows, 256, dtype=torch.bfloat16), uint4, silu=True)
        # The few-rows kernel alone (the rotary fusion's): 32 rows over codes, 8 over a 16-bit weight.
        assert takes(torch.randn(rows, 256, dtype=torch.bfloat16), uint4, few_rows_only=True) == (rows <= 32)
    assert takes(torch.randn(8, 256, dtype=torch.bfloat16), weight, few_rows_only=True)
    # uint4 rows 4 bytes off 16: a few-rows lane's load, not a tiled stage's piece.
    shifted = torch.randint(0, 256, (64, 132), dtype=torch.uint8)[:, :128]
    assert takes(torch.randn(32, 256, dtype=torch.bfloat16), shifted)
    assert not takes(torch.randn(33, 256, dtype=torch.bfloat16), shifted)
    # int8 codes of 48 columns: packs of 8, not stages of 32.
    int8 = torch.randint(-128, 128, (64, 48), dtype=torch.int8)
    assert takes(torch.randn(32, 48, dtype=torch.bfloat16), int8)
    assert not takes(torch.randn(33, 48, dtype=torch.bfloat16), int8)


@requires_cuda
def test_linear_cuda_takes_few_rows_and_leaves_the_rest_to_cublas():
    from kvserve.models.layers.linear import cuda_ops_linear_takes, linear

    weight = torch.randn(64, 256, dtype=torch.bfloat16, device="cuda")
    few, many = (torch.randn(n, 256, dtype=torch.bfloat16, device="cuda") for n in (8, 9))
    assert cuda_ops_linear_takes(few, weight) and not cuda_ops_linear_takes(many, weight)
    assert not cuda_ops_linear_takes(few.float(), weight.float())
    assert not cuda_ops_linear_takes(torch.randn(2, 260, device="cuda").bfloat16()[:, 2:258], weight)
    for x in (few, many):
        torch.testing.assert_close(linear(x, weight), torch.nn.functional.linear(x, weight), rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match=r"linear: on CUDA, 1 to 8 rows .* got 9 rows of bfloat16"):
        ops.linear(torch.empty(9, 64, dtype=torch.bfloat16, device="cuda"), many, weight)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("shape", [(48, 512), (26, 1032), (28672, 4096)])
def test_linear_cuda_with_silu_and_mul_output_gives_the_two_kernels_bits(dtype, rows, shape):
    """A [gate; up] projection writing silu(gate) * up equals the product, then silu_and_mul, bit for
    bit (bias or not; an intermediate size past the blocks' 8 features; Llama-3.1-8B's gate_up);
    Linear.forward_silu_and_mul takes it, and leaves 9 rows to cuBLAS and the kernel."""
    from kvserve.models.layers.linear import Linear

    torch.manual_seed(rows * 10 + shape[0])
    out_features, in_features = shape
    x = torch.randn(rows, in_features).to(dtype).cuda()
    weight = (0.2 * torch.randn(out_features, in_features)).to(dtype).cuda()
    for bias in (None, torch.randn(out_features).to(dtype).cuda()):
        gate_up = torch.empty(rows, out_features, dtype=dtype, device="cuda")
        ops.linear(gate_up, x, weight, bias)
        unfused = torch.full((rows, out_features // 2), float("nan"), dtype=dtype, device="cuda")
        ops.silu_and_mul(unfused, gate_up)
        fused = torch.full_like(unfused, float("nan"))
        ops.linear(fused, x, weight, bias, silu_and_mul_output=True)
        assert torch.equal(fused, unfused)
    layer = Linear(in_features, (out_features // 2, out_features // 2), False, dtype).cuda()
    layer.weight.copy_(weight)
    many = torch.randn(9, in_features).to(dtype).cuda()
    for rows_in in (x, many):
        expected = torch.empty(rows_in.shape[0], out_features // 2, dtype=dtype, device="cuda")
        ops.silu_and_mul(expected, layer(rows_in))
        assert torch.equal(layer.forward_silu_and_mul(rows_in), expected)


def test_linear_with_silu_and_mul_output_is_cuda_only_and_checks_its_shapes():
    x = torch.randn(2, 8).bfloat16()
    with pytest.raises(ValueError, match=r"linear: silu_and_mul_output runs on CUDA only"):
        ops.linear(torch.empty(2, 4, dtype=torch.bfloat16), x, torch.randn(8, 8).bfloat16(), silu_and_mul_output=True)
    with pytest.raises(ValueError, match=r"the weight's rows are \[gate; up\] \(an even number\), got 7"):
        ops.linear(torch.empty(2, 3, dtype=torch.bfloat16), x, torch.randn(7, 8).bfloat16(), silu_and_mul_output=True)
    with pytest.raises(ValueError, match=r"out: dimension 1 must be half the weight's rows = 4, got shape \[2, 8\]"):
        ops.linear(torch.empty(2, 8, dtype=torch.bfloat16), x, torch.randn(8, 8).bfloat16(), silu_and_mul_output=True)


def test_linear_strided_rows():
    """Input rows and weight rows that are views of wider buffers, as a fused projection's slices."""
    torch.manual_seed(5)
    x_wide, w_wide = torch.randn(3, 90), torch.randn(20, 70)
    x, weight = x_wide[:, 10:74], w_wide[:, 3:67]
    out_wide = torch.full((3, 30), float("nan"))
    out = out_wide[:, 5:25]
    ops.linear(out, x, weight)
    torch.testing.assert_close(out, x @ weight.t(), rtol=1e-5, atol=1e-5)
    assert out_wide[:, :5].isnan().all() and out_wide[:, 25:].isnan().all()


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("shape", [(8, 32), (64, 256), (1408, 512), (36, 4864)])
def test_linear_interleaved_weight_gives_the_same_bits(rows, shape):
    """The interleaved copy ([N/4, K/32, 4, 32]) is read in the plain kernel's order: same bits, bias or not."""
    from kvserve.models.layers.linear import interleave_for_ops

    torch.manual_seed(rows + shape[0])
    weight = (0.2 * torch.randn(*shape)).bfloat16()
    interleaved = interleave_for_ops(weight)
    if interleaved is None:
        pytest.skip("this CPU has no interleaved bfloat16 path (AVX512-BF16)")
    assert interleaved.shape == (shape[0] // 4, shape[1] // 32, 4, 32)
    x = torch.randn(rows, shape[1]).bfloat16()
    for bias in (None, torch.randn(shape[0]).bfloat16()):
        plain, ours = (torch.full((rows, shape[0]), float("nan"), dtype=torch.bfloat16) for _ in range(2))
        ops.linear(plain, x, weight, bias)
        ops.linear(ours, x, interleaved, bias)
        assert torch.equal(ours, plain)


def test_interleaving_needs_whole_blocks():
    from kvserve.models.layers.linear import interleave_for_ops

    assert interleave_for_ops(torch.randn(10, 64).bfloat16()) is None  # 10 rows: not blocks of 4
    assert interleave_for_ops(torch.randn(8, 688).bfloat16()) is None  # 688: not chunks of 32
    assert interleave_for_ops(torch.randn(8, 64)) is None  # float32 keeps the plain kernel
    with pytest.raises(ValueError, match=r"weight: dimension 3 must be the 32 elements of an interleaved chunk"):
        ops.linear(torch.empty(1, 8, dtype=torch.bfloat16), torch.randn(1, 64).bfloat16(),
                   torch.randn(2, 2, 4, 16).bfloat16())


@pytest.mark.parametrize("isa", ISAS)
def test_every_isa_path(isa):
    """The paths a CPU without AVX-512 (or without x86) would take, forced by KVSERVE_CPU_ISA: the
    CPU linear's tests (by node id: a -k of "test_linear" would match the whole file by its name)."""
    names = ("test_linear", "test_linear_strided_rows", "test_linear_interleaved_weight_gives_the_same_bits")
    run_tests_under_isa(isa, [f"{__file__}::{name}" for name in names])


def test_a_cpu_where_onednn_refuses_bfloat16_computes_with_kvserves_product(monkeypatch):
    """On an AVX2-only CPU, torch's oneDNN refuses to pack bfloat16 weights (a RuntimeError that once
    stopped every bfloat16 model loading there): the layer keeps no blocked copy and multiplies many
    rows with kvserve.ops.linear (torch's bfloat16 GEMM runs 4-5x slower there), to the same result."""
    from kvserve.models.layers import linear as linear_module

    def refuse(weight, batch_hint):
        raise RuntimeError("mkldnn_reorder_linear_weight: bf16 path needs the cpu support avx_ne_convert or "
                           "avx512bw, avx512vl and avx512dq")

    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", refuse)
    linear_module.onednn_packs.cache_clear()
    try:
        layer = linear_module.Linear(64, (32, 32), False, torch.bfloat16)
        layer.weight.copy_(torch.randn(64, 64, generator=torch.Generator().manual_seed(0)))
        layer.finalize_weights()
        assert layer.packed is None
        x = torch.randn(9, 64, generator=torch.Generator().manual_seed(1)).bfloat16()
        products, product = [], ops.linear
        monkeypatch.setattr(linear_module.ops, "linear", lambda *args: products.append(args) or product(*args))
        torch.testing.assert_close(layer(x).float(), x.float() @ layer.weight.float().T, atol=0.1, rtol=0.02)
        assert len(products) == 1
    finally:
        linear_module.onednn_packs.cache_clear()  # the next tests probe the real packing again
