"""The fused layer kernels (RMSNorm with the residual add, rotary embedding alone and with the KV-cache
write, SiLU-and-mul), argmax and the few-rows linear on the CPU and on CUDA, against the framework ops
they replace on random data. They round at the same points as those ops, so 16-bit results agree but
for rare one-ulp flips (a float32 sum or exp taken in another order); float32 within float32
rounding. Every CPU ISA path; bad input is a ValueError that writes nothing."""

import pytest
import torch
import torch.nn.functional as F

from isa_paths import ISAS, run_tests_under_isa
from kvserve import ops
from requires_cuda import requires_cuda

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]
# Widths that are and are not multiples of the vector width (tails), as models have them.
WIDTHS = [64, 100, 896, 4096]
ISA_SUBSET = "cpu and (float32-100 or bfloat16-896 or argmax or rotary or linear or special_values)"


def reference_rms_norm(x, weight, eps):
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def reference_rotary(x, cos, sin):
    half = x.shape[-1] // 2
    rotate_half = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * torch.cat([cos, cos], -1).unsqueeze(1) + rotate_half * torch.cat([sin, sin], -1).unsqueeze(1)


def assert_matches(ours, reference):
    if ours.dtype == torch.float32:
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    else:
        torch.testing.assert_close(ours, reference, rtol=1e-2, atol=1e-3)
        assert (ours != reference).float().mean() < 0.01


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("width", WIDTHS)
def test_rms_norm(device, dtype, width):
    torch.manual_seed(width)
    x = (3 * torch.randn(33, width)).to(dtype).to(device)
    weight = (1 + 0.3 * torch.randn(width)).to(dtype).to(device)
    out = torch.full_like(x, float("nan"))
    ops.rms_norm(out, x, weight, 1e-5)
    assert_matches(out, reference_rms_norm(x, weight, 1e-5))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rms_norm_over_strided_heads(device, dtype):
    """Per-head norms (Qwen3's q/k norms) read heads of a fused projection in place."""
    torch.manual_seed(1)
    qkv = torch.randn(5, (4 + 2 * 2) * 128).to(dtype).to(device)
    q = qkv[:, :4 * 128].view(5, 4, 128)
    weight = torch.randn(128).to(dtype).to(device)
    out = torch.full_like(q, float("nan"))
    ops.rms_norm(out, q, weight, 1e-6)
    assert_matches(out, reference_rms_norm(q, weight, 1e-6))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("width", WIDTHS)
def test_fused_add_rms_norm(device, dtype, width):
    """The decoder's use: x is a block's output, residual the running sum; both are overwritten."""
    torch.manual_seed(width + 1)
    x = torch.randn(17, width).to(dtype).to(device)
    residual = (2 * torch.randn(17, width)).to(dtype).to(device)
    weight = (1 + 0.3 * torch.randn(width)).to(dtype).to(device)
    expected_sum = x + residual
    expected = reference_rms_norm(expected_sum, weight, 1e-6)
    ops.fused_add_rms_norm(x, residual, weight, 1e-6)
    assert torch.equal(residual, expected_sum)  # one rounding of one add: exact
    assert_matches(x, expected)


def test_rms_norm_strided_rows():
    """Rows that are views of a wider buffer (a fused projection's slice)."""
    torch.manual_seed(3)
    wide = torch.randn(9, 300, dtype=torch.bfloat16)
    x = wide[:, 40:168]
    weight = torch.randn(128, dtype=torch.bfloat16)
    out_wide = torch.full((9, 200), float("nan"), dtype=torch.bfloat16)
    out = out_wide[:, 10:138]
    ops.rms_norm(out, x, weight, 1e-5)
    assert_matches(out, reference_rms_norm(x.contiguous(), weight, 1e-5))
    assert out_wide[:, :10].isnan().all() and out_wide[:, 138:].isnan().all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("width", WIDTHS)
def test_silu_and_mul(device, dtype, width):
    torch.manual_seed(width + 2)
    gate_up = (4 * torch.randn(21, 2 * width)).to(dtype).to(device)
    out = torch.full((21, width), float("nan"), dtype=dtype, device=device)
    ops.silu_and_mul(out, gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    assert_matches(out, F.silu(gate) * up)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", [128, 64, 80, 6])
def test_rotary_embedding(device, dtype, head_dim):
    """q and k as strided views of one fused projection, against Hugging Face's formula."""
    torch.manual_seed(head_dim)
    tokens, heads, kv_heads = 11, 4, 2
    fused = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim).to(dtype).to(device)
    before = fused.clone()
    q = fused[:, :heads * head_dim].view(tokens, heads, head_dim)
    k = fused[:, heads * head_dim:(heads + kv_heads) * head_dim].view(tokens, kv_heads, head_dim)
    angles = torch.rand(tokens, head_dim // 2) * 100
    cos, sin = angles.cos().to(dtype).to(device), angles.sin().to(dtype).to(device)
    ops.rotary_embedding(q, k, cos, sin)
    for ours, start, count in ((q, 0, heads), (k, heads, kv_heads)):
        x = before[:, start * head_dim:(start + count) * head_dim].view(tokens, count, head_dim)
        assert_matches(ours, reference_rotary(x, cos, sin))
    v = slice((heads + kv_heads) * head_dim, None)
    assert torch.equal(fused[:, v], before[:, v])


def qkv_views(qkv, heads, kv_heads, head_dim):
    """q, k, v [T, heads, head_dim] as views of one projection's rows [T, (heads + 2 * kv_heads) * head_dim]."""
    q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    return tuple(x.view(qkv.shape[0], -1, head_dim) for x in (q, k, v))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", [128, 6, 96])
@pytest.mark.parametrize("head_norms", [False, True], ids=["plain", "head_norms"])
def test_rotary_and_cache_equals_rotary_then_the_cache_write(device, dtype, head_dim, head_norms):
    """The fused op against the ops it fuses, on the same device: the same bits in q, k and v (views
    of one projection) and in both caches; a -1 slot writes nothing. With Qwen3's head norms, the
    rms_norm of each q and k head first (on CUDA inside the one kernel at head_dim 128, the norm
    kernels first at 6 and 96: no whole number of 16-byte packs, or not a power of two of them)."""
    torch.manual_seed(head_dim + 1)
    weights = [torch.randn(head_dim).to(dtype).to(device) for _ in range(2)] if head_norms else None
    tokens, heads, kv_heads, blocks, block_size = 11, 4, 2, 4, 4
    fused = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim).to(dtype).to(device)
    angles = torch.rand(tokens, head_dim // 2) * 100
    cos, sin = angles.cos().to(dtype).to(device), angles.sin().to(dtype).to(device)
    slots = torch.tensor([3, -1, 0, 12, 9, 1, 2, 15, 4, 5, -1], device=device)
    results = []
    for fuse in (False, True):
        qkv = fused.clone()
        q, k, v = qkv_views(qkv, heads, kv_heads, head_dim)
        caches = [torch.full((blocks, block_size, kv_heads, head_dim), float("nan"), dtype=dtype, device=device)
                  for _ in range(2)]
        if fuse:
            norms = dict(query_norm_weight=weights[0], key_norm_weight=weights[1], norm_eps=1e-5) if weights else {}
            ops.rotary_and_cache(q, k, v, cos, sin, *caches, slots, **norms)
        else:
            if weights:
                ops.rms_norm(q, q, weights[0], 1e-5)
                ops.rms_norm(k, k, weights[1], 1e-5)
            ops.rotary_embedding(q, k, cos, sin)
            ops.reshape_and_cache(k, v, *caches, slots)
        results.append((qkv, *caches))
    for apart, fused_op in zip(*results):
        assert torch.equal(apart.isnan(), fused_op.isnan()) and torch.equal(apart.nan_to_num(), fused_op.nan_to_num())
    key_cache = results[1][1].view(-1, kv_heads, head_dim)
    assert key_cache[[3, 0, 12]].isfinite().all() and key_cache[[6, 7]].isnan().all()  # written, and not


# (dtype, whether the input's RMSNorm is fused in too: bfloat16 only) of the fused products' tests.
FUSED_PRODUCT_KINDS = [(torch.bfloat16, False), (torch.float16, False), (torch.bfloat16, True)]


def norm_args(normed: bool, hidden: int) -> dict:
    """ops.linear's arguments that fuse an RMSNorm of the input in (none when not `normed`)."""
    return dict(norm_weight=torch.randn(hidden).bfloat16().cuda(), norm_eps=1e-3) if normed else {}


def test_rotary_and_cache_takes_both_head_norms_or_neither():
    heads, kv_heads, head_dim = 2, 1, 16
    qkv = torch.randn(3, (heads + 2 * kv_heads) * head_dim)
    q, k, v = qkv_views(qkv, heads, kv_heads, head_dim)
    cos = sin = torch.ones(3, head_dim // 2)
    caches = [torch.empty(2, 4, kv_heads, head_dim) for _ in range(2)]
    weight = torch.randn(head_dim)
    with pytest.raises(ValueError, match=r"query_norm_weight and key_norm_weight go together"):
        ops.rotary_and_cache(q, k, v, cos, sin, *caches, torch.arange(3), query_norm_weight=weight)
    with pytest.raises(ValueError, match=r"key_norm_weight: dimension 0 must be head_dim of query = 16"):
        ops.rotary_and_cache(q, k, v, cos, sin, *caches, torch.arange(3), query_norm_weight=weight,
                             key_norm_weight=weight[:8])


@requires_cuda
@pytest.mark.parametrize("dtype, normed", FUSED_PRODUCT_KINDS, ids=str)
@pytest.mark.parametrize("shape", [(1, 4, 2, 64), (3, 32, 8, 128), (8, 8, 1, 256)])
def test_linear_rotary_and_cache_gives_the_two_ops_bits(dtype, normed, shape):
    """The qkv projection that rotates q and k and writes the cache itself equals linear, then
    rotary_and_cache, bit for bit: q, k, v and both caches (bias or not; a -1 slot writes nothing;
    the input's norm fused into both or neither)."""
    tokens, heads, kv_heads, head_dim = shape
    torch.manual_seed(tokens * 100 + head_dim)
    hidden, blocks, block_size = 512, 4, 4
    norm = norm_args(normed, hidden)
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
                ops.linear_rotary_and_cache(qkv, x, weight, bias, q, k, v, cos, sin, *caches, slots, **norm)
            else:
                ops.linear(qkv, x, weight, bias, **norm)
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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("width", [7, 100, 32000, 128256])
def test_argmax(device, dtype, width):
    torch.manual_seed(width + 3)
    logits = torch.randn(40, width).to(dtype).to(device)
    out = torch.full((40,), -1, dtype=torch.int32, device=device)
    ops.argmax(out, logits)
    assert torch.equal(out.long(), logits.float().argmax(1))


@pytest.mark.parametrize("device", DEVICES)
def test_argmax_ties_nan_and_strided_rows(device):
    logits = torch.randn(4, 50)
    logits[0, [5, 30]] = 9.0           # tie: the first index wins
    logits[1, 3] = float("nan")        # NaN is ignored
    logits[1, 40] = 7.0
    logits[2] = float("nan")           # no number at all: 0
    logits[3, 49] = 8.0                # the maximum in the tail past the vector width
    out = torch.empty(4, dtype=torch.int32, device=device)
    ops.argmax(out, logits.to(device))
    assert out.tolist() == [5, 40, 0, 49]
    wide = torch.randn(6, 80, device=device)
    out = torch.empty(6, dtype=torch.int32, device=device)
    ops.argmax(out, wide[:, 10:60])
    assert torch.equal(out.long(), wide[:, 10:60].argmax(1))


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
        tolerance = 1e-5 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(out.double(), expected, rtol=tolerance, atol=tolerance)


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
@pytest.mark.parametrize("dtype, normed", FUSED_PRODUCT_KINDS, ids=str)
@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("shape", [(48, 512), (26, 1032), (28672, 4096)])
def test_linear_cuda_with_silu_and_mul_output_gives_the_two_kernels_bits(dtype, normed, rows, shape):
    """A [gate; up] projection writing silu(gate) * up equals the product, then silu_and_mul, bit for
    bit (bias or not; an intermediate size past the blocks' 8 features; Llama-3.1-8B's gate_up; the
    input's norm fused into both or neither); Linear.forward_silu_and_mul takes it, and leaves 9 rows
    to cuBLAS and the kernel."""
    from kvserve.models.layers.linear import Linear

    torch.manual_seed(rows * 10 + shape[0])
    out_features, in_features = shape
    norm = norm_args(normed, in_features)
    x = torch.randn(rows, in_features).to(dtype).cuda()
    weight = (0.2 * torch.randn(out_features, in_features)).to(dtype).cuda()
    for bias in (None, torch.randn(out_features).to(dtype).cuda()):
        gate_up = torch.empty(rows, out_features, dtype=dtype, device="cuda")
        ops.linear(gate_up, x, weight, bias, **norm)
        unfused = torch.full((rows, out_features // 2), float("nan"), dtype=dtype, device="cuda")
        ops.silu_and_mul(unfused, gate_up)
        fused = torch.full_like(unfused, float("nan"))
        ops.linear(fused, x, weight, bias, silu_and_mul_output=True, **norm)
        assert torch.equal(fused, unfused)
    if normed:
        return  # Linear with a norm: test_linear_norm_and_add.py
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


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_silu_and_mul_special_values_cpu(dtype):
    """Infinities, NaN, subnormals, the largest finite values and gates past exp's range: what
    torch's ops give (NaN where they give NaN), within the one-ulp flips of random data."""
    info = torch.finfo(dtype)
    gates = [float("inf"), float("-inf"), float("nan"), info.tiny / 4, -info.tiny / 3, info.max, -info.max,
             0.0, -0.0, -1e30, -100.0, -88.5, -87.5, 88.5, 1.0, -1.0]
    gate = torch.tensor(gates * 3, dtype=torch.float32).to(dtype).view(3, -1)
    up = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0, 2.0, 1.0, -1.0] * 6, dtype=torch.float32).to(dtype).view(3, -1)
    out = torch.empty_like(gate)
    ops.silu_and_mul(out, torch.cat([gate, up], dim=1))
    torch.testing.assert_close(out, F.silu(gate) * up, rtol=1e-2, atol=0, equal_nan=True)


@pytest.mark.parametrize("isa", ISAS)
def test_every_isa_path(isa):
    """The paths a CPU without AVX-512 (or without x86) would take, forced by KVSERVE_CPU_ISA."""
    run_tests_under_isa(isa, __file__, ISA_SUBSET)


BAD_CALLS = {
    "rms_norm dtype": (lambda: ops.rms_norm(torch.empty(3, 8), torch.ones(3, 8, dtype=torch.float64),
                                            torch.ones(8), 1e-5), r"input: expected dtype float32"),
    "rms_norm out dtype": (lambda: ops.rms_norm(torch.empty(3, 8, dtype=torch.float64), torch.ones(3, 8),
                                                torch.ones(8), 1e-5), r"out: expected the dtype of input"),
    "rms_norm weight size": (lambda: ops.rms_norm(torch.empty(3, 8), torch.ones(3, 8), torch.ones(9), 1e-5),
                             r"weight: dimension 0 must be hidden of input = 8"),
    "rms_norm 4-D": (lambda: ops.rms_norm(torch.empty(1, 3, 2, 8), torch.ones(1, 3, 2, 8), torch.ones(8), 1e-5),
                     r"input: expected 3 dimensions \[num_tokens, hidden\] or \[num_tokens, num_heads, hidden\]"),
    "rms_norm strided hidden": (lambda: ops.rms_norm(torch.empty(3, 8), torch.ones(3, 16)[:, ::2], torch.ones(8),
                                                     1e-5), r"input: expected dimensions 1.. contiguous"),
    "rms_norm eps": (lambda: ops.rms_norm(torch.empty(3, 8), torch.ones(3, 8), torch.ones(8), -1.0),
                     r"eps: expected a finite number >= 0"),
    "fused residual shape": (lambda: ops.fused_add_rms_norm(torch.ones(3, 8), torch.ones(2, 8), torch.ones(8), 1e-5),
                             r"residual: expected the shape of input \[3, 8\], got \[2, 8\]"),
    "rotary cos width": (lambda: ops.rotary_embedding(torch.randn(3, 2, 8), torch.randn(3, 1, 8), torch.randn(3, 3),
                                                      torch.randn(3, 3)), r"cos: dimension 1 must be head_dim / 2"),
    "rotary key tokens": (lambda: ops.rotary_embedding(torch.randn(3, 2, 8), torch.randn(2, 1, 8), torch.randn(3, 4),
                                                       torch.randn(3, 4)), r"key: dimension 0 must be num_tokens"),
    "rotary_and_cache value tokens": (lambda: ops.rotary_and_cache(
        torch.randn(3, 2, 8), torch.randn(3, 1, 8), torch.randn(2, 1, 8), torch.randn(3, 4), torch.randn(3, 4),
        torch.empty(2, 4, 1, 8), torch.empty(2, 4, 1, 8), torch.zeros(3, dtype=torch.int64)),
        r"value: expected the shape of key \[3, 1, 8\], got \[2, 1, 8\]"),
    "rotary_and_cache slot": (lambda: ops.rotary_and_cache(
        torch.randn(3, 2, 8), torch.randn(3, 1, 8), torch.randn(3, 1, 8), torch.randn(3, 4), torch.randn(3, 4),
        torch.empty(2, 4, 1, 8), torch.empty(2, 4, 1, 8), torch.tensor([0, 8, 1])), r"slot"),
    "silu odd width": (lambda: ops.silu_and_mul(torch.empty(3, 4), torch.ones(3, 9)),
                       r"input: expected an even last dimension"),
    "silu out width": (lambda: ops.silu_and_mul(torch.empty(3, 5), torch.ones(3, 8)),
                       r"out: dimension 1 must be half the width of input = 4"),
    "argmax out dtype": (lambda: ops.argmax(torch.empty(4, dtype=torch.int64), torch.randn(4, 8)),
                         r"out: expected dtype int32"),
    "argmax rows": (lambda: ops.argmax(torch.empty(5, dtype=torch.int32), torch.randn(4, 8)),
                    r"num_rows of input"),
    "linear in_features": (lambda: ops.linear(torch.empty(4, 5), torch.randn(4, 8), torch.randn(5, 9)),
                           r"weight: dimension 1 must be in_features of input = 8"),
    "linear out_features": (lambda: ops.linear(torch.empty(4, 6), torch.randn(4, 8), torch.randn(5, 8)),
                            r"out: dimension 1 must be out_features of weight = 5"),
    "linear bias": (lambda: ops.linear(torch.empty(4, 5), torch.randn(4, 8), torch.randn(5, 8), torch.randn(4)),
                    r"bias: dimension 0 must be out_features of weight = 5"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_arguments_raise_value_error(case):
    call, message = BAD_CALLS[case]
    with pytest.raises(ValueError, match=message):
        call()


def test_a_failed_call_writes_nothing():
    out = torch.full((4, 8), float("nan"))
    with pytest.raises(ValueError):
        ops.rms_norm(out, torch.randn(4, 8), torch.randn(9), 1e-5)
    assert out.isnan().all()


def test_a_failed_rotary_and_cache_rotates_nothing():
    """A slot out of range fails the call before the rotation: q and k stay as they were."""
    q, k, v = torch.randn(3, 2, 8), torch.randn(3, 1, 8), torch.randn(3, 1, 8)
    q_before, k_before = q.clone(), k.clone()
    caches = [torch.full((2, 4, 1, 8), float("nan")) for _ in range(2)]
    with pytest.raises(ValueError, match="slot"):
        ops.rotary_and_cache(q, k, v, torch.randn(3, 4), torch.randn(3, 4), *caches, torch.tensor([0, 8, 1]))
    assert torch.equal(q, q_before) and torch.equal(k, k_before) and all(c.isnan().all() for c in caches)


@requires_cuda
def test_arrays_on_two_devices_are_rejected():
    x = torch.randn(2, 8, device="cuda")
    with pytest.raises(ValueError, match=r"weight is on cpu but input is on cuda:0"):
        ops.rms_norm(torch.empty_like(x), x, torch.ones(8), 1e-5)
