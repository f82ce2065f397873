"""GPTQ and AWQ checkpoints (kvserve.loader.gptq_awq): written here from a tiny model the way
AutoGPTQ/GPTQModel and AutoAWQ pack them, they load as uint4 codes (symmetric 8-bit GPTQ as int8
codes) and give transformers' ids (logits within 1e-4) over the weights their codes stand for; what
kvserve does not read is refused by name."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from kvserve import Engine, SamplingParams
from kvserve.loader import load_model
from kvserve.int8 import dequantize_int8
from kvserve.loader.gptq_awq import awq_uint4, gptq_int8, gptq_uint4
from kvserve.quantization import checkpoint_quantization
from kvserve.uint4 import dequantize_uint4
from paged_greedy import paged_greedy
from quantized_checkpoints import pack_words, write_quantized
from test_models import PROMPTS, assert_logits_close, hf_greedy

# AWQ's order of a word's eight columns.
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def quantize_asymmetric(weight: torch.Tensor, group_size: int):
    """(values [K, N], zeros [K / g, N], float16 scales [K / g, N]) of weight [N, K]: each group's range
    over 15 steps, zero points in 1..15 (GPTQ's format stores them less 1)."""
    columns = weight.t().float()  # [K, N]
    groups = columns.reshape(-1, group_size, columns.shape[1])
    low, high = groups.amin(dim=1), groups.amax(dim=1)
    scales = ((high - low) / 15).clamp_min(1e-4).half()
    zeros = (-low / scales.float()).round().clamp(1, 15)
    values = (groups / scales.float()[:, None] + zeros[:, None]).round().clamp(0, 15)
    return values.reshape(columns.shape).long(), zeros.long(), scales


def quantize_symmetric_8_bit(weight: torch.Tensor, group_size: int):
    """quantize_asymmetric's triple for GPTQ's symmetric 8 bits: each group's largest magnitude over 127
    steps, every zero point 128."""
    columns = weight.t().float()
    groups = columns.reshape(-1, group_size, columns.shape[1])
    scales = (groups.abs().amax(dim=1) / 127).clamp_min(1e-4).half()
    values = (groups / scales.float()[:, None]).round().clamp(-127, 127) + 128
    return values.reshape(columns.shape).long(), torch.full(scales.shape, 128), scales


def gptq_tensors(values, zeros, scales, bits=4):
    in_features, out_features = values.shape
    per_word = 32 // bits
    qweight = pack_words(values.reshape(in_features // per_word, per_word, out_features).transpose(1, 2), bits)
    qzeros = pack_words((zeros - 1).reshape(zeros.shape[0], -1, per_word), bits)
    return dict(qweight=qweight, qzeros=qzeros, scales=scales)


def awq_tensors(values, zeros, scales):
    def pack(rows):
        return pack_words(rows.reshape(rows.shape[0], -1, 8)[..., AWQ_ORDER])
    return dict(qweight=pack(values), qzeros=pack(zeros), scales=scales)


def write_checkpoint(directory, destination, method: str, group_size: int, bits: int = 4, act_order: bool = False):
    """(the quantized checkpoint, a float32 one of the weights its codes stand for) from `directory`;
    8 bits: GPTQ's symmetric ones. `act_order` (GPTQ's desc_act): each projection's input features
    quantized in a random order, its groups running over that order, g_idx [K] giving each feature's."""
    def quantize(prefix, weight, order):
        features = weight.shape[1]
        size = group_size if group_size != -1 else features
        values, zeros, scales = (quantize_asymmetric if bits == 4 else quantize_symmetric_8_bit)(weight[:, order], size)
        groups = (values.reshape(-1, size, values.shape[1]) - zeros[:, None]) * scales.float()[:, None]
        dequantized = torch.empty(features, weight.shape[0])
        dequantized[order] = groups.reshape(values.shape)
        values[order] = values.clone()  # the features back in their own order, as the checkpoint stores them
        packed = gptq_tensors(values, zeros, scales, bits) if method == "gptq" else awq_tensors(values, zeros, scales)
        if method == "gptq":  # AutoGPTQ's exports: the groups' order, and biases even where there are none
            packed["g_idx"] = torch.empty(features, dtype=torch.int32)
            packed["g_idx"][order] = (torch.arange(features) // size).int()
            packed["bias"] = torch.zeros(weight.shape[0], dtype=weight.dtype)
        return packed, dequantized.t()

    config = (dict(quant_method="gptq", bits=bits, group_size=group_size, desc_act=act_order, sym=bits == 8,
                   checkpoint_format="gptq")
              if method == "gptq" else dict(quant_method="awq", bits=4, group_size=group_size, zero_point=True,
                                            version="gemm"))
    return write_quantized(directory, destination, method, config, quantize, act_order)


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_unpacking_inverts_packing(method):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(24, 64, generator=generator)
    values, zeros, scales = quantize_asymmetric(weight, 32)
    packed = (gptq_tensors if method == "gptq" else awq_tensors)(values, zeros, scales)
    codes, scale, offset = (gptq_uint4 if method == "gptq" else awq_uint4)(
        packed["qweight"], packed["qzeros"], packed["scales"])
    expected = ((values.reshape(2, 32, 24) - zeros[:, None]) * scales.float()[:, None]).reshape(64, 24).t()
    assert torch.equal(dequantize_uint4(codes, scale, offset, torch.float32), expected)


def test_8_bit_unpacking_inverts_packing():
    weight = torch.randn(24, 64, generator=torch.Generator().manual_seed(0))
    values, zeros, scales = quantize_symmetric_8_bit(weight, 32)
    packed = gptq_tensors(values, zeros, scales, bits=8)
    codes, scale = gptq_int8(packed["qweight"], packed["qzeros"], packed["scales"])
    assert codes.dtype == torch.int8 and scale.shape == (24, 4)
    expected = ((values.reshape(2, 32, 24) - 128) * scales.float()[:, None]).reshape(64, 24).t()
    assert torch.equal(dequantize_int8(codes, scale, torch.float32), expected)


@pytest.mark.parametrize("method, group_size, architecture, bits, act_order", [
    ("gptq", 32, "LlamaForCausalLM", 4, False), ("gptq", -1, "Qwen2ForCausalLM", 4, False),
    ("awq", 32, "Qwen3ForCausalLM", 4, False), ("awq", -1, "LlamaForCausalLM", 4, False),
    ("gptq", 16, "Qwen3ForCausalLM", 8, False), ("gptq", -1, "LlamaForCausalLM", 8, False),
    ("gptq", 32, "LlamaForCausalLM", 4, True), ("gptq", 16, "Qwen2ForCausalLM", 8, True)])
def test_a_checkpoint_matches_transformers_on_what_its_codes_stand_for(tiny_model_dir, tmp_path, method, group_size,
                                                                        architecture, bits, act_order):
    """act_order: the codes' columns sorted by group, the input gathered in that order (Linear.input_order),
    in the decoder stack's steps and the layers'."""
    quantized_dir, reference_dir = write_checkpoint(tiny_model_dir(architecture), tmp_path, method, group_size, bits,
                                                    act_order)
    model = load_model(quantized_dir).model
    codes = torch.uint8 if bits == 4 else torch.int8
    assert all(linear.weight.dtype == codes for linear in model.decoder_linears())
    assert all((linear.input_order is not None) == act_order for linear in model.decoder_linears())
    ids, logits = paged_greedy(model, PROMPTS, 4)
    hf_ids, hf_logits = hf_greedy(reference_dir, PROMPTS, 4)
    assert_logits_close(logits, hf_logits)
    assert ids == hf_ids


@pytest.mark.parametrize("quantization", ["awq", "awq_marlin"])  # vLLM's name for AWQ on its Marlin kernels
def test_an_engine_serves_an_awq_checkpoint_in_bfloat16(tiny_model_dir, tmp_path, quantization):
    quantized_dir, _ = write_checkpoint(tiny_model_dir("LlamaForCausalLM"), tmp_path, "awq", 32)
    engine = Engine(quantized_dir, dtype="bfloat16", quantization=quantization, device="cpu")
    outputs = engine.generate(["hello there"], SamplingParams(max_tokens=8, ignore_eos=True), use_tqdm=False)
    assert len(outputs[0].outputs[0].token_ids) == 8


@pytest.mark.parametrize("quantization", ["gptq", "gptq_marlin"])
def test_the_method_must_be_the_checkpoints(tiny_model_dir, quantization):
    with pytest.raises(ValueError, match="quantization 'gptq' reads a GPTQ checkpoint's weights, and .* has no GPTQ"):
        load_model(tiny_model_dir("LlamaForCausalLM"), quantization=quantization)


@pytest.mark.parametrize("config, message", [
    (dict(quant_method="gptq", bits=3, group_size=128), "3-bit weights; kvserve reads 4-bit GPTQ and AWQ weights and "
                                                        "8-bit GPTQ ones"),
    (dict(quant_method="awq", bits=8, group_size=128), "8-bit weights; kvserve reads 4-bit GPTQ and AWQ weights"),
    (dict(quant_method="gptq", bits=8, group_size=128, sym=False), r"asymmetric \(sym false\) 8-bit GPTQ"),
    (dict(quant_method="gptq", bits=4, group_size=48), "group_size 48; kvserve reads 4-bit groups of a multiple of 32"),
    (dict(quant_method="gptq", bits=8, group_size=24), "group_size 24; kvserve reads 8-bit groups of a multiple of 16"),
    (dict(quant_method="gptq", bits=4, group_size=128, checkpoint_format="gptq_v2"), "checkpoint_format 'gptq_v2'"),
    (dict(quant_method="gptq", bits=4, group_size=128, lm_head=True), "a quantized LM head"),
    (dict(quant_method="awq", bits=4, group_size=128, version="gemv"), "AWQ version 'gemv'"),
    (dict(quant_method="awq", bits=4, group_size=128, zero_point=False), "without zero points"),
])
def test_what_kvserve_does_not_read_is_refused_by_name(config, message):
    assert checkpoint_quantization(dict(quant_method="gptq", bits=4, group_size=128)) == "gptq"
    with pytest.raises(ValueError, match=message):
        checkpoint_quantization(config)


def test_a_bias_the_model_has_no_place_for_must_be_zeros(tiny_model_dir, tmp_path):
    quantized_dir, _ = write_checkpoint(tiny_model_dir("LlamaForCausalLM"), tmp_path, "gptq", 32)
    tensors = load_file(quantized_dir / "model.safetensors")
    tensors["model.layers.1.self_attn.o_proj.bias"] += 0.5
    save_file(tensors, quantized_dir / "model.safetensors")
    with pytest.raises(ValueError, match="'model.layers.1.self_attn.o_proj.bias' matches no parameter"):
        load_model(quantized_dir)


def test_8_bit_zero_points_other_than_128_are_refused(tiny_model_dir, tmp_path):
    quantized_dir, _ = write_checkpoint(tiny_model_dir("LlamaForCausalLM"), tmp_path, "gptq", 32, bits=8)
    tensors = load_file(quantized_dir / "model.safetensors")
    tensors["model.layers.1.mlp.up_proj.qzeros"] += 1
    save_file(tensors, quantized_dir / "model.safetensors")
    with pytest.raises(ValueError, match="up_proj: its GPTQ tensors do not fit together: its zero points are not all "
                                         "128"):
        load_model(quantized_dir)


def test_a_g_idx_must_be_what_desc_act_says(tiny_model_dir, tmp_path):
    """Without desc_act, the plain order; with it, groups of one size, and one order for the
    projections of one input."""
    quantized_dir, _ = write_checkpoint(tiny_model_dir("LlamaForCausalLM"), tmp_path, "gptq", 32)
    tensors = load_file(quantized_dir / "model.safetensors")
    name = "model.layers.0.mlp.down_proj.g_idx"
    tensors[name] = tensors[name].flip(0).contiguous()
    save_file(tensors, quantized_dir / "model.safetensors")
    with pytest.raises(ValueError, match="down_proj.g_idx: its groups are not in input order, and config.json's "
                                         "quantization_config has no act order"):
        load_model(quantized_dir)
    ordered_dir, _ = write_checkpoint(tiny_model_dir("LlamaForCausalLM"), tmp_path / "ordered", "gptq", 32,
                                      act_order=True)
    original = load_file(ordered_dir / "model.safetensors")
    tensors = dict(original)
    name = "model.layers.1.self_attn.o_proj.g_idx"
    tensors[name] = tensors[name].clone()
    tensors[name][tensors[name] == 0] = 1  # group 0 emptied into group 1
    save_file(tensors, ordered_dir / "model.safetensors")
    with pytest.raises(ValueError, match="o_proj: its GPTQ tensors do not fit together: its g_idx does not give each of "
                                         "its 2 groups 64 / 2 input features"):
        load_model(ordered_dir)
    tensors = dict(original)
    name = "model.layers.1.self_attn.k_proj.g_idx"
    tensors[name] = tensors[name][torch.randperm(len(tensors[name]), generator=torch.Generator().manual_seed(0))]
    tensors[name] = tensors[name].contiguous()
    save_file(tensors, ordered_dir / "model.safetensors")
    with pytest.raises(ValueError, match="_proj.input_order' differs from the other parts' of "
                                         "'model.layers.1.self_attn.qkv_proj.input_order'"):
        load_model(ordered_dir)


def test_lora_adapters_on_4_bit_weights_match_peft_on_the_weights_they_stand_for(tiny_model_dir, tmp_path):
    """An adapter (its A [r, in_features], though the codes' bytes hold half as many columns) adds to a
    product over uint4 codes as to any other, in the decoder stack's steps and the layers'."""
    from kvserve import LoRARequest
    from test_lora import PROMPTS as LORA_PROMPTS
    from test_lora import kvserve_ids, peft_greedy, save_adapter

    base = tiny_model_dir("LlamaForCausalLM")
    quantized_dir, reference_dir = write_checkpoint(base, tmp_path, "awq", 32)
    lora = LoRARequest("first", 1, save_adapter(base, tmp_path / "first", seed=1))
    expected = {None: peft_greedy(reference_dir, None, LORA_PROMPTS),
                lora: peft_greedy(reference_dir, lora.lora_path, LORA_PROMPTS)}
    engine = Engine(str(quantized_dir), dtype="float32", kv_cache_memory_gb=0.01, block_size=4, enable_lora=True)
    for loras in ([lora] * len(LORA_PROMPTS), [None, lora] * (len(LORA_PROMPTS) // 2)):
        assert kvserve_ids(engine, LORA_PROMPTS, loras) == [expected[r][i] for i, r in enumerate(loras)], loras
