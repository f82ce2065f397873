"""A decoder layer's add + RMSNorm fused into its CUDA few-rows products (ops.linear's norm_weight and
add_to_output): the normed product against a float64 reference of the rounding it documents and
near the ops it replaces, the add bit for bit. The arguments are checked on the CPU too. (The fused
products' epilogues with a norm: test_layer_ops.py.)"""

from __future__ import annotations

import pytest
import torch

from kvserve import _C, ops
from kvserve.models.layers.rms_norm import RMSNorm
from requires_cuda import requires_cuda

EPS = 1e-3


def normed_rows(rows: int, in_features: int, device: str = "cuda") -> tuple[torch.Tensor, RMSNorm]:
    """Rows of different sizes (each its own scale), small enough that EPS moves the scale by a fifth,
    and a norm with random weights."""
    x = torch.randn(rows, in_features) * 0.05 * torch.arange(1, rows + 1).unsqueeze(1)
    norm = RMSNorm(in_features, EPS, torch.bfloat16)
    norm.weight.copy_(torch.randn(in_features))
    return x.bfloat16().to(device), norm.to(device)


def reference(x: torch.Tensor, norm: RMSNorm, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The normed product as the kernel rounds it (x * norm weight once, in bfloat16; the norm's scale
    on the sums), in float64."""
    scale = torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + EPS)
    product = (x * norm.weight).double() @ weight.double().t() * scale
    return product + (0 if bias is None else bias.double())


@requires_cuda
@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("shape", [(48, 512), (26, 1032), (6144, 4096)])
def test_a_normed_product_rounds_as_documented_and_near_the_norm_then_the_product(rows, shape):
    """Output features past the blocks' 16, in_features past a batch of chunks, Llama-3.1-8B's qkv."""
    torch.manual_seed(rows * 10 + shape[0])
    out_features, in_features = shape
    x, norm = normed_rows(rows, in_features)
    weight = (0.2 * torch.randn(out_features, in_features)).bfloat16().cuda()
    for bias in (None, torch.randn(out_features).bfloat16().cuda()):
        fused = torch.full((rows, out_features), float("nan"), dtype=torch.bfloat16, device="cuda")
        ops.linear(fused, x, weight, bias, norm_weight=norm.weight, norm_eps=EPS)
        torch.testing.assert_close(fused.double(), reference(x, norm, weight, bias), rtol=1e-2, atol=1e-2)
        unfused = torch.empty_like(fused)
        ops.linear(unfused, norm(x), weight, bias)
        # Two roundings of each input there, one here: apart by a few of the sums' rounding steps.
        torch.testing.assert_close(fused, unfused, rtol=2e-2, atol=2e-2 * unfused.abs().max().item())


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_add_to_output_gives_the_bits_of_the_product_then_an_add(dtype):
    torch.manual_seed(2)
    x = torch.randn(5, 1032).to(dtype).cuda()
    weight = (0.2 * torch.randn(40, 1032)).to(dtype).cuda()
    for bias in (None, torch.randn(40).to(dtype).cuda()):
        residual = torch.randn(5, 40).to(dtype).cuda()
        product = torch.empty_like(residual)
        ops.linear(product, x, weight, bias)
        expected = residual + product
        ops.linear(residual, x, weight, bias, add_to_output=True)
        assert torch.equal(residual, expected)


def test_the_fusions_check_their_arguments_wherever_the_arrays_are():
    x, norm = normed_rows(2, 64, device="cpu")
    weight, out = torch.randn(16, 64).bfloat16(), torch.empty(2, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"linear: norm_weight and add_to_output run on CUDA only"):
        ops.linear(out, x, weight, norm_weight=norm.weight)
    with pytest.raises(ValueError, match=r"linear: norm_weight and add_to_output run on CUDA only"):
        ops.linear(out, x, weight, add_to_output=True)
    with pytest.raises(ValueError, match=r"norm_weight: dimension 0 must be in_features of input = 64, got shape \[32\]"):
        ops.linear(out, x, weight, norm_weight=norm.weight[:32])
    with pytest.raises(ValueError, match=r"linear: norm_weight takes bfloat16 only .* got float16"):
        ops.linear(out.half(), x.half(), weight.half(), norm_weight=norm.weight.half())
    limit = _C.ops.linear_cuda_max_normed_features
    wide = torch.empty(1, limit + 8, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=rf"linear: norm_weight takes up to {limit} in_features, got {limit + 8}"):
        ops.linear(torch.empty(1, 16, dtype=torch.bfloat16), wide, torch.empty(16, limit + 8, dtype=torch.bfloat16),
                   norm_weight=torch.empty(limit + 8, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"add_to_output with silu_and_mul_output is no layer's product"):
        ops.linear(torch.empty(2, 8, dtype=torch.bfloat16), x, weight, silu_and_mul_output=True, add_to_output=True)
