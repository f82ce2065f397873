"""A decoder layer's add + RMSNorm fused into its CUDA few-rows products (ops.linear's norm_weight and
add_to_output; Linear's `norm` and `add_to`; the Llama layer's decode path): the normed product
against a float64 reference of the rounding it documents and near the ops it replaces, the add bit
for bit, a model's decode steps with the fusions and without, and the layer's form that takes them
on the CPU. The arguments are checked on the CPU too. (The fused products' epilogues with a norm:
test_linear_ops.py.)"""

from __future__ import annotations

import pytest
import torch

from kvserve import _C, ops
from kvserve.loader import load_model
from kvserve.models.layers.linear import Linear
from kvserve.models.layers.rms_norm import RMSNorm
from kvserve.models.llama import LlamaDecoderLayer
from paged_greedy import paged_greedy
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


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
def test_linear_takes_the_norm_and_the_add_in_the_product_on_cuda_and_apart_elsewhere(device):
    """Linear(x, norm, add_to): fused on CUDA at up to 8 rows (near the ops apart); the ops apart at 9
    rows and on the CPU (their bits: rms_norm, the product, torch's add)."""
    torch.manual_seed(3)
    layer = Linear(512, 48, True, torch.bfloat16).to(device)
    layer.weight.copy_(0.2 * torch.randn(48, 512))
    layer.bias.copy_(torch.randn(48))
    layer.finalize_weights()
    for rows in (3, 9):
        x, norm = normed_rows(rows, 512, device)
        residual = torch.randn(rows, 48).bfloat16().to(device)
        apart = residual + layer(norm(x))
        out = layer(x, norm, add_to=residual.clone())
        if rows == 9 or device == "cpu":
            assert torch.equal(out, apart)
        else:
            torch.testing.assert_close(out, apart, rtol=2e-2, atol=0.1)
        residual_in = residual.clone()
        assert layer(x, add_to=residual_in) is residual_in  # in place
        assert torch.equal(residual_in, residual + layer(x))


@requires_cuda
@pytest.mark.parametrize("architecture", ["LlamaForCausalLM", "Qwen3ForCausalLM"])
def test_decode_steps_with_the_norms_fused_are_near_the_steps_without(tiny_model_dir, monkeypatch, architecture):
    """bfloat16 decode steps of 3 sequences (the fused path: Llama's qkv with rotary, Qwen3's qkv
    before its q/k norms) against the same model with the layers' fusion off: the first decode
    step's logits (same inputs: the prefill of 32 tokens takes cuBLAS either way) agree."""
    model = load_model(tiny_model_dir(architecture), dtype="bfloat16", device="cuda").model
    prompts = [[5, 9, 100, 7], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [900 - 37 * i for i in range(17)]]
    fuses_norms, decided = LlamaDecoderLayer.fuses_norms, []

    def spy(layer, stream):
        decided.append(fuses_norms(layer, stream))
        return decided[-1]

    monkeypatch.setattr(LlamaDecoderLayer, "fuses_norms", spy)
    _, fused = paged_greedy(model, prompts, 2, device="cuda")
    assert True in decided and False in decided  # decode steps fused, the prefill not
    monkeypatch.setattr(LlamaDecoderLayer, "fuses_norms", lambda layer, stream: False)
    _, apart = paged_greedy(model, prompts, 2, device="cuda")
    for ours, theirs in zip(fused, apart):
        assert torch.equal(ours[0], theirs[0])  # the prefill's
        error = ((ours[1] - theirs[1]).abs().max() / theirs[1].abs().max()).item()
        assert error < 3e-2, f"first decode step's logits differ by {error:.3f} of their largest magnitude"


def test_the_fusions_check_their_arguments_wherever_the_arrays_are():
    x, norm = normed_rows(2, 64, device="cpu")
    weight, out = torch.randn(16, 64).bfloat16(), torch.empty(2, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"linear: norm_weight and add_to_output run on CUDA only"):
        ops.linear(out, x, weight, norm_weight=norm.weight)
    with pytest.raises(ValueError, match=r"linear: norm_weight and add_to_output run on CUDA only"):
        ops.linear(out, x, weight, add_to_output=True)
    with pytest.raises(ValueError, match=r"norm_weight: dimension 0 must be in_features of input = 64, got shape"):
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


@pytest.mark.parametrize("architecture", ["LlamaForCausalLM", "Qwen3ForCausalLM"])
def test_a_layer_on_its_residual_stream_computes_what_it_does_on_hidden_and_residual(tiny_model_dir, monkeypatch,
                                                                                     architecture):
    """The decode path's layer form (hidden is the whole residual stream, the norms go into the
    projections after them and the adds into those before), taken on the CPU where the products run
    the ops apart: the bits of the layers' (hidden, residual) form, over a prefill of 32 tokens."""
    model = load_model(tiny_model_dir(architecture), dtype="bfloat16", device="cpu").model
    prompts = [[5, 9, 100, 7], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [900 - 37 * i for i in range(17)]]
    _, apart = paged_greedy(model, prompts, 1)
    monkeypatch.setattr(LlamaDecoderLayer, "fuses_norms", lambda layer, stream: True)
    _, stream_form = paged_greedy(model, prompts, 1)
    for ours, theirs in zip(stream_form, apart):
        assert torch.equal(ours[0], theirs[0])
