"""int8 weights: 8-bit signed codes in groups of 16 along each row, each group with a float32 scale,
standing for code * scale (kvserve/linear.h, LinearParams::weight_dtype kInt8).

    codes   int8 [N, K]
    scale   float32 [N, K / 16]

llama.cpp's Q8_0 blocks (32 codes under one scale: two groups), Q6_K blocks (16 groups of 16 codes,
each group's scale its block's scale times its own 8-bit one) and Q5_0 blocks are such groups, and
kvserve.loader.gguf_int8 reads them as they are. kvserve.ops.linear multiplies them in float32: a
decode step reads 1.25 bytes a weight, codes and scales together, where a 16-bit weight takes 2.
"""

from __future__ import annotations

import torch

GROUP_SIZE = 16


def quantize_int8(weight: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, scale): weight [N, K] (K a multiple of 16) rounded to the nearest of each group's steps
    of its largest magnitude / (2^(bits - 1) - 1) (llama.cpp's Q8_0 rounding, in groups of 16; bits 6:
    codes of Q6_K's range, which AVX512-BF16 CPUs multiply faster)."""
    if not 2 <= bits <= 8:
        raise ValueError(f"quantize_int8: bits must be 2 to 8, got {bits}")
    largest = 2 ** (bits - 1) - 1
    if weight.dim() != 2 or weight.shape[1] % GROUP_SIZE != 0:
        raise ValueError(f"quantize_int8: expected a weight [out_features, in_features] with in_features a "
                         f"multiple of {GROUP_SIZE}, got shape {tuple(weight.shape)}")
    groups = weight.float().reshape(weight.shape[0], -1, GROUP_SIZE)
    if not groups.isfinite().all():
        raise ValueError("quantize_int8: the weight holds NaN or infinite values")
    scale = groups.abs().amax(dim=2) / largest
    codes = (groups / scale.clamp_min(1e-30)[..., None]).round().clamp(-largest, largest)
    return codes.to(torch.int8).reshape(weight.shape), scale.contiguous()


def dequantize_int8(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The weight [..., K] that codes [..., K] stand for with their groups' scales [..., K / 16], code *
    scale computed in float64 (exact) and rounded once to `dtype` (the reference
    kvserve.ops.dequantize_weight is tested against)."""
    values = codes.double().unflatten(-1, (-1, GROUP_SIZE)) * scale.double()[..., None]
    return values.flatten(-2).to(dtype)
