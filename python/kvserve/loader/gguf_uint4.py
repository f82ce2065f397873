"""llama.cpp's 4-bit blocks as uint4 codes with a scale and an offset a group of 32 (kvserve.uint4),
value for value: each group's code * scale + offset is, bit for bit in float32, what gguf-py's
dequantize makes of the block.

    Q4_0  32 weights a block: float16 d, 16 bytes of codes      (code - 8) * d  = code * d + (-8 d)
    Q4_1  32 weights a block: float16 d and m, 16 bytes          code * d + m
    Q4_K  256 weights a block: float16 d and dmin, 12 bytes of 6-bit scales and mins (sc, mn), one pair
          a group of 32, and 128 bytes of codes                  code * (d sc) - dmin mn

Q4_0's and Q4_1's bytes are already in kvserve's order (byte j: element j in its low nibble, j + 16 in
its high one); Q4_K's hold a pair of groups a 32 bytes (low nibbles the first group, high the second),
reordered here.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from kvserve.uint4 import HALF_GROUP

UINT4_TYPES = (GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q4_K)


def block_half(blocks: np.ndarray, start: int) -> np.ndarray:
    """The float16 at byte `start` of each block, as float32 [num_blocks, 1]."""
    return np.ascontiguousarray(blocks[:, start:start + 2]).view(np.float16).astype(np.float32)


def tensor_rows(values: np.ndarray, rows: int, dtype: np.dtype | None = None) -> torch.Tensor:
    """A tensor's blocks' codes (or their groups' scales or offsets, `dtype` float32) as a contiguous
    torch tensor [rows, ...]."""
    return torch.from_numpy(np.ascontiguousarray(values, dtype=dtype).reshape(rows, -1))


def _k_scales_and_mins(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K's 12 bytes a block as 8 six-bit scales and 8 six-bit mins [num_blocks, 8]: groups 0-3 in the
    low 6 bits of bytes 0-3 (scales) and 4-7 (mins), groups 4-7 in the nibbles of bytes 8-11 with
    their top 2 bits in the top bits of bytes 0-3 and 4-7."""
    low, high, rest = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = np.concatenate([low & 63, (rest & 15) | ((low >> 6) << 4)], axis=1)
    mins = np.concatenate([high & 63, (rest >> 4) | ((high >> 6) << 4)], axis=1)
    return scales.astype(np.float32), mins.astype(np.float32)


def gguf_uint4(data: np.ndarray, tensor_type: GGMLQuantizationType,
               rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes uint8 [rows, K / 2], scale [rows, K / 32], offset [rows, K / 32]) of a tensor of one of
    UINT4_TYPES, `data` its raw bytes."""
    if tensor_type not in UINT4_TYPES:
        raise ValueError(f"gguf_uint4: {tensor_type.name} blocks are not 4-bit groups (expected one of "
                         f"{[t.name for t in UINT4_TYPES]})")
    blocks = np.asarray(data, dtype=np.uint8).reshape(-1, GGML_QUANT_SIZES[tensor_type][1])
    if tensor_type == GGMLQuantizationType.Q4_0:
        d = block_half(blocks, 0)
        codes, scale, offset = blocks[:, 2:], d, -8 * d
    elif tensor_type == GGMLQuantizationType.Q4_1:
        codes, scale, offset = blocks[:, 4:], block_half(blocks, 0), block_half(blocks, 2)
    else:  # Q4_K
        d, dmin = block_half(blocks, 0), block_half(blocks, 2)
        sc, mn = _k_scales_and_mins(blocks[:, 4:16])
        scale, offset = d * sc, -(dmin * mn)
        pairs = blocks[:, 16:].reshape(-1, 4, 1, 2 * HALF_GROUP)
        values = np.concatenate([pairs & 15, pairs >> 4], axis=2).reshape(-1, 8, 2, HALF_GROUP)
        codes = values[:, :, 0] | (values[:, :, 1] << 4)
    return tensor_rows(codes, rows), tensor_rows(scale, rows, np.float32), tensor_rows(offset, rows, np.float32)
