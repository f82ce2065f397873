"""Grouped codes of either kind (uint4 and int8): llama.cpp's blocks read as codes, value for value, a
Linear holding codes (kvserve/models/layers/weight_codes.py) multiplying by the weight they stand
for, on the path its row count and dtype choose, and test_uint4's and test_int8's products run again
under every ISA."""

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Blocks
from gguf.quants import dequantize

from isa_paths import ISAS, run_tests_under_isa
from kvserve import ops
from kvserve.int8 import dequantize_int8
from kvserve.loader.gguf_int8 import INT8_TYPES, gguf_int8
from kvserve.loader.gguf_uint4 import UINT4_TYPES, gguf_uint4
from kvserve.models.layers import linear as linear_module
from kvserve.uint4 import dequantize_uint4
from test_int8 import random_int8
from test_layer_ops import DTYPES
from test_uint4 import random_uint4

KINDS = {"uint4": (random_uint4, dequantize_uint4), "int8": (random_int8, dequantize_int8)}
# The bytes each block type's float16 scales (and mins) start at; the rest of a block is codes.
FLOAT16_STARTS = {Blocks.Q4_0: (0,), Blocks.Q4_1: (0, 2), Blocks.Q4_K: (0, 2), Blocks.Q8_0: (0,), Blocks.Q5_0: (0,),
                  Blocks.Q6_K: (208,), Blocks.Q3_K: (108,), Blocks.IQ4_NL: (0,), Blocks.IQ4_XS: (0,)}


def random_blocks(tensor_type: Blocks, rows: int, in_features: int) -> np.ndarray:
    """Raw blocks of random bytes but for their float16 scales (finite, small, of either sign)."""
    block_elements, block_bytes = gguf.GGML_QUANT_SIZES[tensor_type]
    generator = np.random.default_rng(int(tensor_type))
    blocks = generator.integers(0, 256, (rows * in_features // block_elements, block_bytes), dtype=np.uint8)
    for start in FLOAT16_STARTS[tensor_type]:
        halves = (0.01 * generator.standard_normal((len(blocks), 1))).astype(np.float16)
        blocks[:, start:start + 2] = halves.view(np.uint8)
    return blocks.reshape(rows, -1)


@pytest.mark.parametrize("tensor_type", UINT4_TYPES + INT8_TYPES, ids=lambda t: t.name)
def test_gguf_blocks_read_value_for_value(tensor_type):
    """gguf_uint4's codes, scales and offsets, or gguf_int8's codes and scales, through kvserve's own
    dequantize_weight in float32, give gguf-py's dequantization of the same blocks, bit for bit."""
    rows, in_features = 6, 512
    blocks = random_blocks(tensor_type, rows, in_features)
    if tensor_type in UINT4_TYPES:
        codes, *scales = gguf_uint4(blocks, tensor_type, rows)
        shapes = [(rows, in_features // 2), (rows, in_features // 32), (rows, in_features // 32)]
    else:
        codes, *scales = gguf_int8(blocks, tensor_type, rows)
        shapes = [(rows, in_features), (rows, in_features // 16)]
    assert [tuple(t.shape) for t in (codes, *scales)] == shapes
    out = torch.empty(rows, in_features)
    ops.dequantize_weight(out, codes, *scales)
    assert torch.equal(out, torch.from_numpy(dequantize(blocks, tensor_type).reshape(rows, in_features)))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows, in_features", [(3, 96), (127, 96), (128, 96), (40, 8192)])
def test_a_layer_of_codes_multiplies_by_the_weight_they_stand_for(kind, dtype, rows, in_features, monkeypatch):
    """prepare_uint4 or prepare_int8, the codes loaded, then products of decode and prefill sizes:
    bfloat16 from 128 rows (or 512 KiB of input rows) widens the whole weight for oneDNN's GEMM (where
    oneDNN takes it), everything else takes ops.linear."""
    random_codes, dequantize_codes = KINDS[kind]
    layer = linear_module.Linear(in_features, (64, 32), True, dtype)
    getattr(layer, f"prepare_{kind}")()
    params = (layer.weight, layer.weight_scale) + ((layer.weight_offset,) if kind == "uint4" else ())
    assert (layer.weight_offset is None) == (kind == "int8")
    for param, value in zip(params, random_codes(96, in_features, seed=rows), strict=True):
        param.copy_(value)
    layer.bias.copy_(torch.randn(96, generator=torch.Generator().manual_seed(rows)))
    layer.finalize_weights()
    assert layer.packed is None and layer.interleaved is None
    widened = []
    dequantize = ops.dequantize_weight
    monkeypatch.setattr(linear_module.ops, "dequantize_weight", lambda *args: widened.append(1) or dequantize(*args))
    x = torch.randn(rows, in_features, generator=torch.Generator().manual_seed(rows + 1)).to(dtype)
    weight = dequantize_codes(*params)
    expected = x.double() @ weight.T + layer.bias.double()
    # The 16-bit dtypes' roundings of the output (and of the weights in panels), relative to sum |x w|.
    magnitude = x.double().abs() @ weight.abs().T + layer.bias.double().abs()
    assert ((layer(x).double() - expected).abs() <= 2.0 ** -7 * magnitude).all()
    long_rows = rows * in_features * x.element_size() > linear_module.DENSE_INPUT_BYTES
    dense = (rows >= 128 or long_rows) and dtype == torch.bfloat16 and linear_module.onednn_packs(dtype)
    assert widened == ([1] if dense else [])


@pytest.mark.parametrize("isa", ISAS)
def test_every_isa_path(isa):
    """The products and dequantize_weight of both kinds of codes, under each ISA, in one process."""
    here = Path(__file__).parent
    names = {"test_uint4.py": ("test_linear_uint4_weight", "test_every_uint4_code_reads_its_value",
                               "test_dequantize_weight_gives_each_code_times_its_scale_plus_its_offset"),
             "test_int8.py": ("test_linear_int8_weight", "test_every_int8_code_reads_its_value",
                              "test_dequantize_weight_gives_each_code_times_its_scale")}
    run_tests_under_isa(isa, [f"{here / file}::{name}" for file, tests in names.items() for name in tests])
