"""uint4 weights: 4-bit codes in groups of 32 along each row, each group with a float32 scale and
offset, standing for code * scale + offset (kvserve/linear.h, LinearParams::weight_dtype kUInt4).

    codes   uint8 [N, K / 2]     two codes a byte; group g of a row is bytes 16g .. 16g + 15, byte j
                                 holding element 32g + j in its low nibble, 32g + 16 + j in its high one
    scale   float32 [N, K / 32]
    offset  float32 [N, K / 32]

llama.cpp's Q4_0, Q4_1 and Q4_K blocks are such groups (kvserve.loader.gguf_uint4 reads them as they
are), and so are GPTQ's and AWQ's. kvserve.ops.linear multiplies them in float32: a decode step reads
0.75 bytes a weight, codes and scales together, where a 16-bit weight takes 2.
"""

from __future__ import annotations

import torch

GROUP_SIZE = 32
HALF_GROUP = GROUP_SIZE // 2


def pack_uint4(values: torch.Tensor) -> torch.Tensor:
    """codes uint8 [N, K / 2] holding values [N, K] (integers 0..15, K a multiple of 32) in the order
    the module docstring gives."""
    rows, columns = values.shape
    groups = values.to(torch.uint8).reshape(rows, columns // GROUP_SIZE, 2, HALF_GROUP)
    return (groups[:, :, 0] | (groups[:, :, 1] << 4)).reshape(rows, columns // 2)


def unpack_uint4(codes: torch.Tensor) -> torch.Tensor:
    """The values [N, K] (uint8, 0..15) that pack_uint4 packed into codes [N, K / 2]."""
    rows, size = codes.shape
    groups = codes.reshape(rows, size // HALF_GROUP, 1, HALF_GROUP)
    return torch.cat([groups & 15, groups >> 4], dim=2).reshape(rows, 2 * size)


def quantize_uint4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, scale, offset): weight [N, K] (K a multiple of 32) rounded to the nearest of 16 evenly
    spaced values from each group's smallest weight to its largest (llama.cpp's Q4_1 rounding)."""
    if weight.dim() != 2 or weight.shape[1] % GROUP_SIZE != 0:
        raise ValueError(f"quantize_uint4: expected a weight [out_features, in_features] with in_features a "
                         f"multiple of {GROUP_SIZE}, got shape {tuple(weight.shape)}")
    groups = weight.float().reshape(weight.shape[0], -1, GROUP_SIZE)
    if not groups.isfinite().all():
        raise ValueError("quantize_uint4: the weight holds NaN or infinite values")
    low, high = groups.amin(dim=2), groups.amax(dim=2)
    scale = (high - low) / 15
    steps = torch.where(scale[..., None] > 0, (groups - low[..., None]) / scale.clamp_min(1e-30)[..., None], 0)
    values = steps.round().clamp(0, 15).reshape(weight.shape)
    return pack_uint4(values), scale.contiguous(), low.contiguous()


def dequantize_uint4(codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor,
                     dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The weight [N, K] the codes stand for, code * scale + offset, computed in float64 and rounded
    once to `dtype` (the reference kvserve.ops.dequantize_weight is tested against)."""
    values = unpack_uint4(codes).double().reshape(codes.shape[0], -1, GROUP_SIZE)
    weight = values * scale.double()[..., None] + offset.double()[..., None]
    return weight.reshape(codes.shape[0], -1).to(dtype)
