"""The fused layer kernels on a GPU against the torch code the CPU path runs (kvserve.models.layers),
on the same CUDA tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kvserve import ops
from kvserve.models.layers.rotary_embedding import apply_rotary_
from requires_cuda import requires_cuda

pytestmark = requires_cuda

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# float32: rounding order only; 16-bit: one rounding of the output apart at most.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def torch_rms_norm(x, weight, eps):
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def assert_close(actual, expected, dtype):
    torch.testing.assert_close(actual.float(), expected.float(), rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", [4096, 1000, 33])
def test_rms_norm(dtype, hidden):
    x = torch.randn(7, hidden, device="cuda").to(dtype)
    weight = (1 + 0.2 * torch.randn(hidden, device="cuda")).to(dtype)
    out = torch.full_like(x, float("nan"))
    ops.rms_norm(out, x, weight, 1e-5)
    assert_close(out, torch_rms_norm(x, weight, 1e-5), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rms_norm_over_strided_heads(dtype):
    qkv = torch.randn(5, (4 + 2 * 2) * 128, device="cuda").to(dtype)
    q = qkv[:, :4 * 128].view(5, 4, 128)
    weight = torch.randn(128, device="cuda").to(dtype)
    out = torch.full_like(q, float("nan"))
    ops.rms_norm(out, q, weight, 1e-6)
    assert_close(out, torch_rms_norm(q, weight, 1e-6), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", [4096, 33])
def test_fused_add_rms_norm(dtype, hidden):
    x = torch.randn(9, hidden, device="cuda").to(dtype)
    residual = torch.randn(9, hidden, device="cuda").to(dtype)
    weight = torch.randn(hidden, device="cuda").to(dtype)
    expected_sum = x + residual
    expected = torch_rms_norm(expected_sum, weight, 1e-5)
    ops.fused_add_rms_norm(x, residual, weight, 1e-5)
    assert torch.equal(residual, expected_sum)
    assert_close(x, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", [128, 64, 16])
def test_rotary_embedding_on_fused_qkv_views(dtype, head_dim):
    tokens, heads, kv_heads = 6, 8, 2
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, device="cuda").to(dtype)
    q = qkv[:, :heads * head_dim].view(tokens, heads, head_dim)
    k = qkv[:, heads * head_dim:(heads + kv_heads) * head_dim].view(tokens, kv_heads, head_dim)
    angles = torch.arange(tokens, device="cuda").float()[:, None] * torch.rand(head_dim // 2, device="cuda")
    cos, sin = angles.cos().to(dtype)[:, None], angles.sin().to(dtype)[:, None]
    expected_q, expected_k, v_before = q.clone(), k.clone(), qkv[:, (heads + kv_heads) * head_dim:].clone()
    apply_rotary_(expected_q, cos, sin)
    apply_rotary_(expected_k, cos, sin)
    ops.rotary_embedding(q, k, cos[:, 0], sin[:, 0])
    assert_close(q, expected_q, dtype)
    assert_close(k, expected_k, dtype)
    assert torch.equal(qkv[:, (heads + kv_heads) * head_dim:], v_before)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("size", [14336, 100, 7])
def test_silu_and_mul(dtype, size):
    x = torch.randn(5, 2 * size, device="cuda").to(dtype)
    out = torch.full((5, size), float("nan"), dtype=dtype, device="cuda")
    ops.silu_and_mul(out, x)
    assert_close(out, F.silu(x[:, :size]) * x[:, size:], dtype)


def test_arrays_on_two_devices_are_rejected():
    x = torch.randn(2, 8, device="cuda")
    with pytest.raises(ValueError, match=r"weight is on cpu but input is on cuda:0"):
        ops.rms_norm(torch.empty_like(x), x, torch.ones(8), 1e-5)
