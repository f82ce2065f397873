"""int8 weights (kvserve.int8): kvserve.ops.linear and dequantize_weight over int8 codes against
float64 (every code, both of the kernel's paths, every ISA), the checks on their arguments, the
quantizer, and GGUF files of 8-, 6- and 5-bit blocks against transformers' own GGUF loader (the
blocks read value for value, and a layer's choice of path: test_weight_codes.py)."""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType

from codes_product import assert_product_matches_float64
from kvserve import Engine, SamplingParams, ops
from kvserve.int8 import GROUP_SIZE, dequantize_int8, quantize_int8
from kvserve.loader import load as load_module
from kvserve.loader import load_model
from kvserve.loader.gguf_int8 import gguf_int8
from paged_greedy import paged_greedy
from test_layer_ops import DTYPES
from test_models import PROMPTS, assert_logits_close, hf_greedy


def random_int8(out_features: int, in_features: int, seed: int = 0, codes: str = "8-bit") -> tuple[torch.Tensor,
                                                                                                 torch.Tensor]:
    """Codes and scales drawn at random (scales of either sign, never zeros). codes "8-bit": every code;
    "6-bit": Q6_K's [-32, 31]; "mixed": each 64 codes of a row either every code or [-64, 63] (the
    bounds included), the two paths of the AVX512-BF16 kernel."""
    generator = torch.Generator().manual_seed(seed)
    low, high = (-32, 32) if codes == "6-bit" else (-128, 128)
    values = torch.randint(low, high, (out_features, in_features), generator=generator)
    if codes == "mixed":
        chunks = values.unflatten(1, (-1, 16)).split(4, dim=1)
        narrow = torch.rand(out_features, len(chunks), generator=generator) < 0.5
        values = torch.cat([torch.where(narrow[:, i, None, None], chunk.clamp(-64, 63), chunk)
                            for i, chunk in enumerate(chunks)], dim=1).flatten(1)
    scale = 0.004 * torch.randn(out_features, in_features // GROUP_SIZE, generator=generator)
    return values.to(torch.int8), scale


@pytest.mark.parametrize("codes", ["8-bit", "6-bit", "mixed"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows", [1, 3, 8, 9, 17, 70])
@pytest.mark.parametrize("shape", [(6, 16), (37, 256), (11, 208), (9, 4864)])
def test_linear_int8_weight(dtype, rows, shape, codes):
    """Against float64 over code * scale, on random data: up to 8 rows read the codes directly (on
    AVX512-BF16, codes in [-64, 63] as bfloat16 pairs, wider ones in float32), more widen them first
    (in rows of the dtype, or on AVX512-BF16 bfloat16 rows against input rows in the vector lanes);
    groups a row of 1, 16, 13 (a last chunk of 1 group) and 304; with and without bias."""
    out_features, in_features = shape
    codes, scale = random_int8(out_features, in_features, seed=rows, codes=codes)
    x = torch.randn(rows, in_features, generator=torch.Generator().manual_seed(rows)).to(dtype)
    assert_product_matches_float64(x, dequantize_int8(codes, scale), codes, weight_scale=scale)


@pytest.mark.parametrize("rows", [1, 17])
def test_every_int8_code_reads_its_value(rows):
    """Weight row i holds code i - 128 in column (5 i) % 64, zeros elsewhere, with its own scales,
    against one-hot inputs: each output is that code times its group's scale, exactly (a product of
    an 8-bit integer and a float32 rounded once, times 1.0)."""
    codes = torch.zeros(256, 64, dtype=torch.int8)
    for i in range(256):
        codes[i, (5 * i) % 64] = i - 128
    _, scale = random_int8(256, 64, seed=3)
    x = torch.zeros(rows, 64)
    for m in range(rows):
        x[m, (5 * m) % 64] = 1.0
    out = torch.empty(rows, 256)
    ops.linear(out, x, codes, weight_scale=scale)
    assert torch.equal(out, x @ dequantize_int8(codes, scale, torch.float32).t())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dequantize_weight_gives_each_code_times_its_scale(dtype):
    codes, scale = random_int8(40, 4864, seed=4)
    out = torch.full((40, 4864), float("nan"), dtype=dtype)
    ops.dequantize_weight(out, codes, scale)
    # One rounding in float32, then one to the dtype: as float64's product rounded once to the dtype
    # (a product of 8 and 24 significant bits is exact in float64; float32 then rounds it as the
    # kernel does, and a 16-bit dtype's rounding of a float32 may differ from float64's by the double
    # rounding, within one unit; float16's subnormals are units of 2^-24).
    expected = dequantize_int8(codes, scale)
    if dtype == torch.float32:
        assert torch.equal(out, expected.float())
    else:
        finfo = torch.finfo(dtype)
        assert ((out.double() - expected).abs() <= (expected.abs() + finfo.smallest_normal) * finfo.eps).all()


@pytest.mark.parametrize("change, message", [
    (dict(scale=None), "linear: weight_scale is required with an int8 weight"),
    (dict(offset=torch.ones(8, 4)), "linear: weight_scale is required with an int8 weight, weight_offset is for uint4"),
    (dict(scale=torch.ones(8, 2)), r"weight_scale: dimension 1 must be in_features / 16 = 4"),
    (dict(scale=torch.ones(8)), r"weight_scale: expected 2 dimensions \[out_features, in_features / 16\]"),
    (dict(weight=torch.zeros(8, 32, dtype=torch.int8)), r"weight: dimension 1 must be in_features of input = 64"),
    (dict(x=torch.randn(2, 40).bfloat16(), weight=torch.zeros(8, 40, dtype=torch.int8)),
     "an int8 weight's rows are whole groups of 16: in_features must be a multiple of 16, got 40"),
    (dict(weight=torch.zeros(2, 2, 4, 32, dtype=torch.int8)), "a quantized weight is read plain, not interleaved"),
])
def test_linear_checks_an_int8_weights_arguments(change, message):
    x = change.get("x", torch.randn(2, 64).bfloat16())
    out = torch.empty(2, 8, dtype=torch.bfloat16)
    weight = change.get("weight", torch.zeros(8, 64, dtype=torch.int8))
    with pytest.raises(ValueError, match=message):
        ops.linear(out, x, weight, None, weight_scale=change.get("scale", torch.ones(8, 4)),
                   weight_offset=change.get("offset"))


def test_quantize_int8_rounds_each_group_to_steps_of_its_largest_magnitude():
    weight = torch.randn(5, 48, generator=torch.Generator().manual_seed(0)) * torch.tensor([1e-3, 0.1, 1, 100, 0])[:, None]
    codes, scale = quantize_int8(weight)
    assert codes.dtype == torch.int8 and scale.shape == (5, 3)
    groups = weight.reshape(5, 3, 16)
    torch.testing.assert_close(scale, groups.abs().amax(dim=2) / 127)
    assert (codes[:4].reshape(4, 3, 16).abs().amax(dim=2) == 127).all()
    error = (dequantize_int8(codes, scale) - weight.double()).abs().reshape(5, 3, 16)
    assert (error <= scale.double()[..., None] / 2 * (1 + 1e-5)).all()
    assert not codes[4].any()  # a row of zeros stays zeros
    with pytest.raises(ValueError, match="in_features a multiple of 16"):
        quantize_int8(torch.ones(2, 40))


def test_gguf_int8_refuses_other_blocks():
    with pytest.raises(ValueError, match="Q4_0 blocks are not int8 groups"):
        gguf_int8(np.zeros((1, 18), dtype=np.uint8), GGMLQuantizationType.Q4_0, 1)


@pytest.mark.parametrize("architecture, tensor_type, tensor_types, tied", [
    ("LlamaForCausalLM", GGMLQuantizationType.Q8_0, None, False),
    ("Qwen2ForCausalLM", GGMLQuantizationType.Q8_0, None, True),
    ("LlamaForCausalLM", GGMLQuantizationType.Q4_1,
     {"token_embd": GGMLQuantizationType.Q8_0, "ffn_down": GGMLQuantizationType.Q5_0}, True),
], ids=["llama-q8_0", "qwen2-q8_0-tied", "llama-q4_1-q8_0-tied-embeddings-q5_0-down"])
def test_a_gguf_file_of_8_bit_blocks_matches_transformers(gguf_pair, architecture, tensor_type, tensor_types, tied):
    """Its 8-bit blocks load as int8 codes: the projections of a Q8_0 file, its LM head, and the token
    embeddings (with a tied LM head, as SmolLM2's Q4_1 file stores them beside 4-bit projections), and
    so do 5-bit ones (Q5_0, as llama.cpp's K-quant mixes store rows not a multiple of 256);
    greedy ids equal (logits within 1e-4) transformers' over the values it dequantizes the same blocks
    to, through prefill (panels, a widened lookup) and decode (the decoder stack)."""
    # transformers reads no rope scaling from GGUF files, so these models have none.
    _, path = gguf_pair(architecture, tensor_type, tensor_types, rope_scaling=None, tie_word_embeddings=tied)
    model = load_model(path, dtype="float32").model
    assert model.model.layers[1].mlp.down_proj.weight.dtype == torch.int8
    codes = torch.int8 if tensor_type == GGMLQuantizationType.Q8_0 else torch.uint8
    assert model.model.layers[1].mlp.gate_up_proj.weight.dtype == codes
    assert model.model.embed_tokens.weight.dtype == torch.int8
    assert (model.lm_head is None) == tied
    if not tied:
        assert model.lm_head.weight.dtype == torch.int8
    ids, logits = paged_greedy(model, PROMPTS[:2], 4)
    hf_ids, hf_logits = hf_greedy(path.parent, PROMPTS[:2], 4, gguf_file=path.name)
    assert_logits_close(logits, hf_logits)
    assert ids == hf_ids


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_int8_codes_give_what_the_dequantized_file_gives(gguf_pair, dtype, monkeypatch):
    """A tied model of Q8_0 blocks, reading codes, against the same file loaded dequantized (as kvserve
    loads the block types it has no codes for): the embedding lookup gives the widened table's rows bit for bit, and in float32
    the ids are equal (logits within 1e-4; in bfloat16 the widened weights are rounded to it, the
    codes' values are not)."""
    _, path = gguf_pair("Qwen2ForCausalLM", GGMLQuantizationType.Q8_0, tie_word_embeddings=True)
    quantized = load_model(path, dtype=dtype).model
    monkeypatch.setattr(load_module, "_keep_codes", lambda module, weights: set())
    dequantized = load_model(path, dtype=dtype).model
    assert quantized.model.embed_tokens.weight.dtype == torch.int8
    assert dequantized.model.embed_tokens.weight.dtype == getattr(torch, dtype)
    token_ids = torch.tensor([[3, 17], [250, 3]])
    assert torch.equal(quantized.model.embed_tokens(token_ids), dequantized.model.embed_tokens(token_ids))
    if dtype == "float32":
        ids, logits = paged_greedy(quantized, PROMPTS, 4)
        expected_ids, expected_logits = paged_greedy(dequantized, PROMPTS, 4)
        assert_logits_close(logits, expected_logits)
        assert ids == expected_ids


def test_an_engine_on_an_8_bit_gguf_file_generates(gguf_pair):
    _, path = gguf_pair("LlamaForCausalLM", GGMLQuantizationType.Q8_0, rope_scaling=None)
    engine = Engine(path, dtype="bfloat16", device="cpu")
    assert engine.runner.model.model.layers[0].mlp.gate_up_proj.weight.dtype == torch.int8
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    outputs = engine.generate(["hello there", "a b c d e f g h i j"], params, use_tqdm=False)
    assert [len(output.outputs[0].token_ids) for output in outputs] == [8, 8]
