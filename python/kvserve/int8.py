"""int8 weights: 8-bit signed codes in groups of 16 along each row, each group with a float32 scale,
standing for code * scale (kvserve/linear.h, LinearParams::weight_dtype kInt8).

    codes   int8 [N, K]
    scale   float32 [N, K / 16]

llama.cpp's Q8_0 blocks (32 codes under one scale: two groups) and Q6_K blocks (16 groups of 16 codes,
each group's scale its block's scale times its own 8-bit one) are such groups, and
kvserve.loader.gguf_int8 reads them as they are. kvserve.ops.linear multiplies them in float32: a
decode step reads 1.25 bytes a weight, codes and scales together, where a 16-bit weight takes 2.
"""

from __future__ import annotations

import torch

GROUP_SIZE = 16


def dequantize_int8(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The weight [..., K] that codes [..., K] stand for with their groups' scales [..., K / 16], code *
    scale computed in float64 (exact) and rounded once to `dtype`: what kvserve.ops.dequantize_weight
    gives, and the rows an int8 embedding table looks up."""
    values = codes.double().unflatten(-1, (-1, GROUP_SIZE)) * scale.double()[..., None]
    return values.flatten(-2).to(dtype)
