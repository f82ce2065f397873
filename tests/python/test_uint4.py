"""uint4 weights (kvserve.uint4): the packing and the quantizer, kvserve.ops.linear and
dequantize_weight over uint4 codes against float64 (every code, both of the kernel's paths, every
ISA), the checks on their arguments, and GGUF files of 4-bit blocks against transformers' own GGUF
loader (the blocks read value for value, and a layer's choice of path: test_weight_codes.py)."""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType

from codes_product import assert_product_matches_float64
from kvserve import Engine, SamplingParams, ops
from kvserve.loader import load as load_module
from kvserve.loader import load_model
from kvserve.loader.gguf_uint4 import gguf_uint4
from kvserve.uint4 import dequantize_uint4, pack_uint4, quantize_uint4, unpack_uint4
from paged_greedy import paged_greedy
from test_layer_ops import DTYPES
from test_models import PROMPTS, assert_logits_close, hf_greedy


def random_uint4(out_features: int, in_features: int, seed: int = 0):
    """Codes, scales and offsets drawn at random (every code, scales of either sign, never zeros)."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randint(0, 16, (out_features, in_features), generator=generator)
    groups = in_features // 32
    scale = 0.05 * torch.randn(out_features, groups, generator=generator)
    offset = 0.3 * torch.randn(out_features, groups, generator=generator)
    return pack_uint4(values), scale, offset


def test_pack_uint4_order_and_round_trip():
    values = torch.randint(0, 16, (3, 64), generator=torch.Generator().manual_seed(1))
    codes = pack_uint4(values)
    assert codes.dtype == torch.uint8 and codes.shape == (3, 32)
    # Byte j of group g: element 32g + j in its low nibble, 32g + 16 + j in its high one.
    assert codes[1, 16 + 5].item() == values[1, 32 + 5].item() | (values[1, 32 + 16 + 5].item() << 4)
    assert torch.equal(unpack_uint4(codes), values.to(torch.uint8))


def test_quantize_uint4_spans_each_group_from_its_least_to_its_largest():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(5, 96, generator=generator) * torch.tensor([1e-3, 0.1, 1, 100, 0])[:, None]
    codes, scale, offset = quantize_uint4(weight)
    assert scale.shape == offset.shape == (5, 3) and scale.dtype == offset.dtype == torch.float32
    groups = weight.reshape(5, 3, 32)
    torch.testing.assert_close(offset, groups.amin(dim=2))
    torch.testing.assert_close(scale * 15 + offset, groups.amax(dim=2))
    values = unpack_uint4(codes).reshape(5, 3, 32)
    assert (values[:4].amin(dim=2) == 0).all() and (values[:4].amax(dim=2) == 15).all()
    # Each weight within half a step (and float32's rounding) of its code's value.
    error = (dequantize_uint4(codes, scale, offset) - weight.double()).abs().reshape(5, 3, 32)
    assert (error <= scale.double()[..., None] / 2 * (1 + 1e-5) + 1e-6 * groups.abs().double()).all()
    assert not dequantize_uint4(codes[4:], scale[4:], offset[4:]).any()  # a row of zeros stays zeros


@pytest.mark.parametrize("bad, message", [
    (torch.ones(4, 48), "in_features a multiple of 32"),
    (torch.ones(64), "in_features a multiple of 32"),
    (torch.tensor([[float("nan")] * 32]), "NaN or infinite"),
])
def test_quantize_uint4_refuses_what_has_no_codes(bad, message):
    with pytest.raises(ValueError, match=message):
        quantize_uint4(bad)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows", [1, 3, 8, 9, 17, 70])
@pytest.mark.parametrize("shape", [(6, 32), (37, 256), (11, 224), (9, 4864)])
def test_linear_uint4_weight(dtype, rows, shape):
    """Against float64 over code * scale + offset, on random data: up to 8 rows read the codes directly,
    more widen them first (in rows of the dtype, or on AVX512-BF16 bfloat16 rows against input rows
    in the vector lanes); groups a row of 1, 8, 7 (AVX512-BF16 widens four at a time) and 152; with
    and without bias."""
    out_features, in_features = shape
    codes, scale, offset = random_uint4(out_features, in_features, seed=rows)
    x = torch.randn(rows, in_features, generator=torch.Generator().manual_seed(rows)).to(dtype)
    assert_product_matches_float64(x, dequantize_uint4(codes, scale, offset), codes, weight_scale=scale,
                                   weight_offset=offset)


@pytest.mark.parametrize("rows", [1, 17])
def test_every_uint4_code_reads_its_value(rows):
    """Weight row i holds code i % 16 in column (5 i) % 64 of its two groups, zeros elsewhere, with
    its own scale and offset, against one-hot inputs: each output is that code's value, in float32 (a
    fused multiply-add's rounding, or on the portable path a product's and a sum's)."""
    values = torch.zeros(48, 64, dtype=torch.uint8)
    for i in range(48):
        values[i, (5 * i) % 64] = i % 16
    codes, (_, scale, offset) = pack_uint4(values), random_uint4(48, 64, seed=3)
    x = torch.zeros(rows, 64)
    for m in range(rows):
        x[m, (5 * m) % 64] = 1.0
    out = torch.empty(rows, 48)
    ops.linear(out, x, codes, weight_scale=scale, weight_offset=offset)
    weight = dequantize_uint4(codes, scale, offset, torch.float32)
    # out[m, i] = weight[i, column of m]: one product of 1.0, plus zeros times the other weights.
    expected = x @ weight.t()
    torch.testing.assert_close(out, expected, rtol=2.0 ** -22, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dequantize_weight_gives_each_code_times_its_scale_plus_its_offset(dtype):
    codes, scale, offset = random_uint4(40, 4864, seed=4)
    out = torch.full((40, 4864), float("nan"), dtype=dtype)
    ops.dequantize_weight(out, codes, scale, offset)
    expected = dequantize_uint4(codes, scale, offset)
    # One rounding in float32 (a fused multiply-add, or a product and a sum), then one to the dtype.
    assert ((out.double() - expected).abs() <= 2.0 ** -22 * expected.abs() + 2.0 ** -23 * offset.abs().max()
            + (0 if dtype == torch.float32 else expected.abs() * torch.finfo(dtype).eps)).all()


@pytest.mark.parametrize("change, message", [
    (dict(offset=None), "linear: weight_scale and weight_offset are required with a uint4 weight"),
    (dict(scale=None), "linear: weight_scale and weight_offset are required with a uint4 weight"),
    (dict(offset=torch.ones(8, 3)), r"weight_offset: dimension 1 must be in_features / 32 = 2"),
    (dict(scale=torch.ones(8)), r"weight_scale: expected 2 dimensions \[out_features, in_features / 32\]"),
    (dict(scale=torch.ones(8, 2).bfloat16()), r"weight_scale: expected dtype float32"),
    (dict(weight=torch.zeros(8, 64, dtype=torch.uint8)), r"weight: dimension 1 must be in_features of input / 2 = 32"),
    (dict(x=torch.randn(2, 48).bfloat16(), weight=torch.zeros(8, 24, dtype=torch.uint8)),
     "in_features must be a multiple of 32, got 48"),
    (dict(weight=torch.zeros(2, 2, 4, 32, dtype=torch.uint8)), "a quantized weight is read plain, not interleaved"),
])
def test_linear_checks_a_uint4_weights_arguments(change, message):
    x = change.get("x", torch.randn(2, 64).bfloat16())
    out = torch.empty(2, 8, dtype=torch.bfloat16)
    weight = change.get("weight", torch.zeros(8, 32, dtype=torch.uint8))
    scale, offset = change.get("scale", torch.ones(8, 2)), change.get("offset", torch.ones(8, 2))
    with pytest.raises(ValueError, match=message):
        ops.linear(out, x, weight, None, weight_scale=scale, weight_offset=offset)


def test_dequantize_weight_checks_its_arguments():
    out = torch.empty(8, 64)
    with pytest.raises(ValueError, match="dequantize_weight: weight_scale and weight_offset are required"):
        ops.dequantize_weight(out, torch.zeros(8, 32, dtype=torch.uint8), torch.ones(8, 2))
    with pytest.raises(ValueError, match="weight_offset is for uint4 weights"):
        ops.dequantize_weight(out, torch.zeros(8, 64, dtype=torch.float8_e4m3fn), torch.ones(8), torch.ones(8, 2))
    with pytest.raises(ValueError, match="weight: dimension 1 must be in_features of out / 2 = 32"):
        ops.dequantize_weight(out, torch.zeros(8, 64, dtype=torch.uint8), torch.ones(8, 2), torch.ones(8, 2))


def test_gguf_uint4_refuses_other_blocks():
    with pytest.raises(ValueError, match="Q8_0 blocks are not 4-bit groups"):
        gguf_uint4(np.zeros((1, 34), dtype=np.uint8), GGMLQuantizationType.Q8_0, 1)


@pytest.mark.parametrize("architecture, tensor_type, tensor_types", [
    ("LlamaForCausalLM", GGMLQuantizationType.Q4_0, None),
    ("Qwen2ForCausalLM", GGMLQuantizationType.Q4_1, None),
    # As llama.cpp's Q4_K_M stores some projections finer: those read as int8 codes, and the fused
    # projections they are part of part by part (Linear.prepare_parts).
    ("LlamaForCausalLM", GGMLQuantizationType.Q4_1, {"attn_v": GGMLQuantizationType.Q8_0,
                                                     "ffn_up": GGMLQuantizationType.Q8_0,
                                                     "ffn_down": GGMLQuantizationType.Q8_0}),
    # As Q3_K_M stores a Q5_K v beside Q3_K q and k: a part of neither kind, dequantized alone.
    ("LlamaForCausalLM", GGMLQuantizationType.Q4_1, {"attn_v": GGMLQuantizationType.Q5_1,
                                                     "ffn_up": GGMLQuantizationType.Q5_1}),
], ids=["llama-q4_0", "qwen2-q4_1", "llama-mixed", "llama-mixed-with-neither"])
def test_a_gguf_file_of_4_bit_blocks_matches_transformers(gguf_pair, architecture, tensor_type, tensor_types):
    """Its decoder projections load as uint4 codes (in the mix, a projection of 8-bit blocks as int8
    codes, one of both kinds in parts of each, and one with a part of neither kind in parts, that part
    in the dtype), and greedy ids equal (logits within 1e-4) transformers' over the values it
    dequantizes the same blocks to; prefill (the panels) and decode (the decoder stack, reading codes)."""
    # transformers reads no rope scaling from GGUF files, so these models have none.
    _, path = gguf_pair(architecture, tensor_type, tensor_types, rope_scaling=None)
    model = load_model(path, dtype="float32").model
    layer = model.model.layers[0]
    held = {name: linear.weight.dtype if linear.parts is None else tuple(part.weight.dtype for part in linear.parts)
            for name, linear in (("qkv", layer.self_attn.qkv_proj), ("o", layer.self_attn.o_proj),
                                 ("gate_up", layer.mlp.gate_up_proj), ("down", layer.mlp.down_proj))}
    uint4, int8, plain = torch.uint8, torch.int8, torch.float32
    expected = {None: dict(qkv=uint4, o=uint4, gate_up=uint4, down=uint4),
                GGMLQuantizationType.Q8_0: dict(qkv=(uint4, uint4, int8), o=uint4, gate_up=(uint4, int8), down=int8),
                GGMLQuantizationType.Q5_1: dict(qkv=(uint4, uint4, plain), o=uint4, gate_up=(uint4, plain),
                                                down=uint4)}[(tensor_types or {}).get("attn_v")]
    assert held == expected
    ids, logits = paged_greedy(model, PROMPTS[:2], 4)
    hf_ids, hf_logits = hf_greedy(path.parent, PROMPTS[:2], 4, gguf_file=path.name)
    assert_logits_close(logits, hf_logits)
    assert ids == hf_ids


def test_quantization_gguf_names_a_gguf_file(gguf_pair):
    """vLLM's quantization="gguf": a GGUF file loads its blocks as codes, as without it; a Hugging Face
    directory is refused."""
    directory, path = gguf_pair("LlamaForCausalLM", GGMLQuantizationType.Q4_0)
    model = load_model(path, dtype="float32", quantization="gguf").model
    assert model.model.layers[0].mlp.gate_up_proj.weight.dtype == torch.uint8
    with pytest.raises(ValueError, match="quantization 'gguf' reads a GGUF file's blocks, and .* is not a GGUF file"):
        load_model(directory, quantization="gguf")


@pytest.mark.parametrize("architecture", ["LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"])
def test_codes_give_what_the_dequantized_file_gives(gguf_pair, architecture, monkeypatch):
    """Every GGUF architecture (transformers' GGUF loader misreads Qwen3's head_dim, so this is the
    comparison for it): the model reading codes gives the ids (logits within 1e-4) of the same file
    loaded dequantized (as kvserve loads the block types it has no codes for)."""
    _, path = gguf_pair(architecture, GGMLQuantizationType.Q4_0)
    quantized = load_model(path, dtype="float32").model
    monkeypatch.setattr(load_module, "_keep_codes", lambda module, weights: set())
    dequantized = load_model(path, dtype="float32").model
    assert quantized.model.layers[1].mlp.down_proj.weight.dtype == torch.uint8
    assert dequantized.model.layers[1].mlp.down_proj.weight.dtype == torch.float32
    ids, logits = paged_greedy(quantized, PROMPTS, 4)
    expected_ids, expected_logits = paged_greedy(dequantized, PROMPTS, 4)
    assert_logits_close(logits, expected_logits)
    assert ids == expected_ids


def test_asking_for_fp8_weights_quantizes_the_file_dequantized(gguf_pair):
    _, path = gguf_pair("LlamaForCausalLM", GGMLQuantizationType.Q4_0, rope_scaling=None)
    model = load_model(path, quantization="fp8").model
    assert all(linear.weight.dtype == torch.float8_e4m3fn for linear in model.decoder_linears())


def test_an_engine_on_a_4_bit_gguf_file_generates(gguf_pair):
    _, path = gguf_pair("LlamaForCausalLM", GGMLQuantizationType.Q4_0, rope_scaling=None)
    engine = Engine(path, dtype="bfloat16", device="cpu")
    assert engine.runner.model.model.layers[0].mlp.gate_up_proj.weight.dtype == torch.uint8
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    outputs = engine.generate(["hello there", "a b c d e f g h i j"], params, use_tqdm=False)
    assert [len(output.outputs[0].token_ids) for output in outputs] == [8, 8]
