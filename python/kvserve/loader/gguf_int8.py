"""llama.cpp's blocks of symmetric groups (8-, 6-, 5-, 4- and 3-bit) as int8 codes with a scale a group of 16
(kvserve.int8), value for value: each code * scale is, bit for bit in float32, what gguf-py's
dequantize makes of the block.

    Q8_0  32 weights a block: float16 d, 32 int8 codes                       code * d (two groups)
    Q6_K  256 weights a block: 128 bytes of low nibbles, 64 of high bit pairs, 16 int8 scales sc (one
          a group of 16), float16 d                                         (code - 32) * (d sc)
    Q5_0  32 weights a block: float16 d, 4 bytes of high bits (bit j: element j's), 16 bytes of low
          nibbles (byte j: element j low, element 16 + j high)               (code - 16) * d (two groups)
    Q3_K  256 weights a block: 32 bytes of high bits, 64 of low bit pairs, 12 bytes of 16 six-bit
          scales sc, float16 d                    (low - (4 unless the high bit is set)) * (d (sc - 32))
    IQ4_NL 32 weights a block: float16 d, 16 bytes of nibbles (as Q5_0's low ones)
                                                                         IQ4_TABLE[nibble] * d (two groups)
    IQ4_XS 256 weights a block: float16 d, 16 bits of high scale pairs, 4 bytes of low scale nibbles,
          128 bytes of nibbles (IQ4_NL's order, 16 bytes a sub-block of 32)
                                                                  IQ4_TABLE[nibble] * (d (sc - 32)) (two groups)

Q5_0 is what llama.cpp's K-quant mixes (Q4_K_M, ...) store rows of a length not a multiple of 256 as;
Q3_K is most of a Q3_K_S/M/L file (its 4- and 5-bit K blocks beside it are read as uint4 codes or
widened), IQ4_XS and IQ4_NL of an IQ4_XS or IQ4_NL file: their 4 bits index a table of 16 int8
values (llama.cpp's kvalues_iq4nl), so the codes are the table's values. 3- and 4-bit codes in int8
take 1.25 bytes a weight with their scales, where the file's 0.43 to 0.56 and a 16-bit weight's 2.

A Q6_K block's elements in 128-element halves h: element 128 h + 32 r + j (r 0..3, j 0..31) has the
nibble of byte 64 h + 32 (r % 2) + j (low for r < 2, high otherwise) and the bit pair 2 r of byte
32 h + j of the high bits. A Q3_K block's element 128 h + 32 r + j has the bit pair 2 r of byte
32 h + j of the low pairs and bit 4 h + r of byte j of the high bits; its scale i is the nibble
i % 8 of bytes 0-7 (low for i < 8) with, above it, the bit pair 2 (i // 4) of byte 8 + i % 4. An
IQ4_XS block's scale i (of sub-block i of 32) is the nibble i % 2 of low byte i // 2 with, above it,
the bit pair 2 i of the high bits. d sc is exact in float32 (11 and at most 8 significant bits), so
the product rounds once, as gguf-py's does.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from kvserve.loader.gguf_uint4 import block_half, tensor_rows

INT8_TYPES = (GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q6_K, GGMLQuantizationType.Q5_0,
              GGMLQuantizationType.Q3_K, GGMLQuantizationType.IQ4_NL, GGMLQuantizationType.IQ4_XS)
# The values IQ4_NL's and IQ4_XS's nibbles stand for (before their scales).
IQ4_TABLE = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)


def _q6_k_codes(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Q6_K's 6-bit codes less 32, int8 [num_blocks, 256], from its low nibbles [num_blocks, 128] and
    high bit pairs [num_blocks, 64] (the module docstring's order)."""
    nibbles = low.reshape(-1, 2, 1, 64) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    pairs = high.reshape(-1, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    values = (nibbles & 15).reshape(-1, 2, 4, 32) | ((pairs & 3) << 4)
    return (values.astype(np.int8) - np.int8(32)).reshape(-1, 256)


def _q3_k_codes(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    """Q3_K's 3-bit codes less 4 (none less where the high bit is set), int8 [num_blocks, 256], from its
    high bits [num_blocks, 32] and low bit pairs [num_blocks, 64] (the module docstring's order)."""
    pairs = low.reshape(-1, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    bits = high.reshape(-1, 1, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 2, 4, 1)
    values = (pairs & 3).astype(np.int8) - ((~bits & 1) << 2).astype(np.int8)
    return values.reshape(-1, 256)


def _six_bit_scales(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Six-bit scales less 32, float32, from their low nibbles and high bit pairs (each in the scales'
    order, in the low bits of its array)."""
    scales = (low & 15).astype(np.uint8) | ((high & 3).astype(np.uint8) << 4)
    return (scales.astype(np.int8) - np.int8(32)).astype(np.float32)


def _q3_k_scales(packed: np.ndarray) -> np.ndarray:
    """Q3_K's 12 bytes a block as its 16 six-bit scales less 32 [num_blocks, 16], float32."""
    nibbles = packed[:, :8].reshape(-1, 1, 8) >> np.array([0, 4], dtype=np.uint8).reshape(1, 2, 1)
    pairs = packed[:, 8:].reshape(-1, 1, 4) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 4, 1)
    return _six_bit_scales(nibbles.reshape(-1, 16), pairs.reshape(-1, 16))


def _nibbles(nibble_bytes: np.ndarray) -> np.ndarray:
    """uint8 [num_blocks, 32 * sub-blocks] from bytes of nibbles [num_blocks, 16 * sub-blocks], in
    element order: byte j of a sub-block's 16 holds its element j (low nibble) and 16 + j (high)."""
    halves = nibble_bytes.reshape(-1, 1, 16) >> np.array([0, 4], dtype=np.uint8).reshape(1, 2, 1)
    return (halves & 15).reshape(len(nibble_bytes), -1)


def _iq4_xs_scales(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    """IQ4_XS's 8 six-bit scales less 32 [num_blocks, 8], float32, from its high bit pairs (2 bytes a
    block) and low nibbles (4 bytes)."""
    pairs = np.ascontiguousarray(high).view(np.uint16) >> np.arange(0, 16, 2, dtype=np.uint16).reshape(1, 8)
    nibbles = low.reshape(-1, 4, 1) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2)
    return _six_bit_scales(nibbles.reshape(-1, 8), pairs)


def _per_16(scale: np.ndarray) -> np.ndarray:
    """Scales a group of 32 [num_blocks, n] as the two groups of 16 each stands for [num_blocks, 2n]."""
    return np.repeat(scale, 2, axis=1)


def gguf_int8(data: np.ndarray, tensor_type: GGMLQuantizationType, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int8 [rows, K], scale [rows, K / 16]) of a tensor of one of INT8_TYPES, `data` its raw
    bytes."""
    if tensor_type not in INT8_TYPES:
        raise ValueError(f"gguf_int8: {tensor_type.name} blocks are not int8 groups (expected one of "
                         f"{[t.name for t in INT8_TYPES]})")
    blocks = np.asarray(data, dtype=np.uint8).reshape(-1, GGML_QUANT_SIZES[tensor_type][1])
    if tensor_type == GGMLQuantizationType.Q8_0:
        codes, scale = blocks[:, 2:].view(np.int8), _per_16(block_half(blocks, 0))
    elif tensor_type == GGMLQuantizationType.Q5_0:
        high = np.unpackbits(blocks[:, 2:6], axis=1, bitorder="little")
        codes = (_nibbles(blocks[:, 6:]) | (high << 4)).astype(np.int8) - np.int8(16)
        scale = _per_16(block_half(blocks, 0))
    elif tensor_type == GGMLQuantizationType.IQ4_NL:
        codes, scale = IQ4_TABLE[_nibbles(blocks[:, 2:])], _per_16(block_half(blocks, 0))
    elif tensor_type == GGMLQuantizationType.IQ4_XS:
        codes = IQ4_TABLE[_nibbles(blocks[:, 8:])]
        scale = _per_16(block_half(blocks, 0) * _iq4_xs_scales(blocks[:, 2:4], blocks[:, 4:8]))
    elif tensor_type == GGMLQuantizationType.Q3_K:
        codes = _q3_k_codes(blocks[:, :32], blocks[:, 32:96])
        scale = block_half(blocks, 108) * _q3_k_scales(blocks[:, 96:108])
    else:  # Q6_K
        codes = _q6_k_codes(blocks[:, :128], blocks[:, 128:192])
        scale = block_half(blocks, 208) * blocks[:, 192:208].view(np.int8).astype(np.float32)
    return tensor_rows(codes, rows), tensor_rows(scale, rows, np.float32)
