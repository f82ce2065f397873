"""The fused layer kernels (RMSNorm with the residual add, rotary embedding alone and with the KV-cache
write, SiLU-and-mul) and argmax on the CPU and on CUDA, against the framework ops they replace on
random data (the few-rows linear and its fusions: test_linear_ops.py). They round at the same
points as those ops, so 16-bit results agree but for rare one-ulp flips (a float32 sum or exp taken
in another order); float32 within float32 rounding. Every CPU ISA path; bad input is a ValueError that writes nothing."""

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
ISA_SUBSET = "cpu and (float32-100 or bfloat16-896 or argmax or rotary or special_values)"


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
