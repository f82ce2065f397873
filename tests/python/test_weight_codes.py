"""A Linear holding grouped codes (kvserve/models/layers/weight_codes.py: uint4 and int8) multiplies
by the weight its codes stand for, on the path its row count and dtype choose."""

import pytest
import torch

from kvserve import ops
from kvserve.int8 import dequantize_int8
from kvserve.models.layers import linear as linear_module
from kvserve.uint4 import dequantize_uint4
from test_int8 import random_int8
from test_layer_ops import DTYPES
from test_uint4 import random_uint4

KINDS = {"uint4": (random_uint4, dequantize_uint4), "int8": (random_int8, dequantize_int8)}


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
