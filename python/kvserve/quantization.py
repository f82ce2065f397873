"""Weight-only fp8 quantization of the decoder layers' projections: vLLM's `quantization="fp8"`.

    Engine(model, quantization="fp8")          kvserve serve MODEL --quantization fp8

At load, each row of the qkv, o, gate_up and down projections' weights becomes e4m3 codes (8-bit
floats: 3 mantissa bits, magnitudes up to 448) and one float32 scale, the row's largest magnitude
over 448, so that the row's largest weight keeps the most precision e4m3 has (about 2 significant
decimal digits; vLLM's online fp8 takes one scale a tensor, which a row with small weights shares
with the tensor's largest). Products multiply the codes' values by the input in float32 and scale
each output once (kvserve.ops.linear's weight_scale): half a 16-bit weight's bytes to read at
decode, where a CPU's steps wait on memory. The embeddings, the norms and the LM head keep the
model's dtype, as vLLM keeps them.

Runs on the CPU; the outputs are those of the model with each weight replaced by its code's value
times its row's scale (dequantize), not the unquantized model's.
"""

from __future__ import annotations

import torch

QUANTIZATIONS = ("fp8",)
# e4m3's largest finite magnitude (torch.finfo(torch.float8_e4m3fn).max).
E4M3_MAX = 448.0


def check_quantization(quantization: str | None, device: torch.device | None = None) -> None:
    """ValueError for a method kvserve does not have, or a device it does not run on."""
    if quantization is None:
        return
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {list(QUANTIZATIONS)} or None, got {quantization!r}")
    if device is not None and device.type != "cpu":
        raise ValueError(f"quantization {quantization!r} runs on the CPU only (its products are kvserve's CPU "
                         f"kernels), got device {str(device)!r}")


def quantize_fp8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, scale): weight [N, K] as float8_e4m3fn codes [N, K] and a float32 scale per row [N], each
    row's largest magnitude mapped to 448 (a row of zeros: scale 1). ValueError for a weight that is
    not finite."""
    if weight.dim() != 2:
        raise ValueError(f"quantize_fp8: expected a weight [out_features, in_features], "
                         f"got shape {tuple(weight.shape)}")
    rows = weight.float()
    if not rows.isfinite().all():
        raise ValueError("quantize_fp8: the weight holds NaN or infinite values")
    largest = rows.abs().amax(dim=1)
    scale = torch.where(largest > 0, largest / E4M3_MAX, torch.ones_like(largest))
    codes = (rows / scale[:, None]).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return codes, scale.contiguous()


def dequantize_fp8(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The weight the codes stand for, codes * scale per row, in float32 rounded once to `dtype`."""
    return (codes.float() * scale[:, None]).to(dtype)
