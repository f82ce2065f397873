"""compressed-tensors' integer checkpoints (kvserve.loader.compressed_tensors): written here from a
tiny model the way llm-compressor stores W4A16, W8A16 and W8A8 weights, they load as uint4 and int8
codes and give transformers' ids (logits within 1e-4) over the weights their codes stand for (W8A8's
activations taken as they are); what kvserve does not read is refused by name."""

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file

from kvserve.loader import load_model
from kvserve.quantization import checkpoint_quantization
from paged_greedy import paged_greedy
from quantized_checkpoints import pack_words, write_quantized
from test_models import PROMPTS, assert_logits_close, hf_greedy


def pack_int32(values: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Unsigned fields [R, C] as int32 words of 32 / bits fields along `dim`, the first the lowest bits."""
    per_word = 32 // bits
    rows = values if dim == 1 else values.t()
    words = pack_words(rows.reshape(rows.shape[0], -1, per_word), bits)
    return words if dim == 1 else words.t().contiguous()


def quantize(weight: torch.Tensor, bits: int, group_size: int, symmetric: bool):
    """(q [N, K] signed, zero points [N, K / g] signed, float16 scales [N, K / g]) of weight [N, K], as
    llm-compressor's min-max observer would give them."""
    groups = weight.float().reshape(weight.shape[0], -1, group_size)
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if symmetric:
        scales = (groups.abs().amax(dim=2) / high).clamp_min(1e-4).half()
        zeros = torch.zeros(scales.shape, dtype=torch.long)
    else:
        minimum, maximum = groups.amin(dim=2).clamp(max=0), groups.amax(dim=2).clamp(min=0)
        scales = ((maximum - minimum) / (high - low)).clamp_min(1e-4).half()
        zeros = (low - minimum / scales.float()).round().clamp(low, high).long()
    q = (groups / scales.float()[..., None] + zeros[..., None]).round().clamp(low, high).long()
    return q.reshape(weight.shape), zeros, scales


def write_checkpoint(directory, destination, bits: int = 4, group_size: int = 32, symmetric: bool = True,
                     actorder: str | None = None, fmt: str = "pack-quantized"):
    """(the compressed-tensors checkpoint, a float32 one of the weights its codes stand for) from
    `directory`; group_size -1: strategy "channel". actorder "group": each projection's input
    features quantized in a random order, with its g_idx. fmt "int-quantized": W8A8's int8 weights
    as they are (and zero points of zeros), its activations quantized per token."""
    def quantize_projection(prefix, weight, order):
        rows, features = weight.shape
        size = group_size if group_size != -1 else features
        q, zeros, scales = quantize(weight[:, order], bits, size, symmetric)
        dequantized = torch.empty(rows, features)
        dequantized[:, order] = ((q.reshape(rows, -1, size) - zeros[..., None]) * scales.float()[..., None]).reshape(
            rows, features)
        q[:, order] = q.clone()  # the features back in their own order, as the checkpoint stores them
        bias = 1 << (bits - 1)
        if fmt == "int-quantized":
            stored = dict(weight=q.to(torch.int8), weight_scale=scales, weight_zero_point=zeros.to(torch.int8))
            return stored, dequantized
        packed = dict(weight_packed=pack_int32(q + bias, bits, dim=1), weight_scale=scales,
                      weight_shape=torch.tensor([rows, features], dtype=torch.int32))
        if not symmetric:
            packed["weight_zero_point"] = pack_int32(zeros + bias, bits, dim=0)
        if actorder == "group":
            packed["weight_g_idx"] = torch.empty(features, dtype=torch.int32)
            packed["weight_g_idx"][order] = (torch.arange(features) // size).int()
        return packed, dequantized

    config = quantization_config(bits, group_size, symmetric, actorder)
    if fmt == "int-quantized":
        config["format"] = fmt
        config["config_groups"]["group_0"]["input_activations"] = dict(num_bits=8, type="int", symmetric=True,
                                                                       strategy="token", dynamic=True)
    return write_quantized(directory, destination, "compressed", config, quantize_projection, actorder == "group")


def quantization_config(bits=4, group_size=32, symmetric=True, actorder=None) -> dict:
    channel = group_size == -1
    weights = dict(num_bits=bits, type="int", symmetric=symmetric, dynamic=False, actorder=actorder,
                   strategy="channel" if channel else "group", group_size=None if channel else group_size)
    return dict(quant_method="compressed-tensors", format="pack-quantized", ignore=["lm_head"],
                config_groups=dict(group_0=dict(targets=["Linear"], weights=weights, input_activations=None)))


PACKED = "pack-quantized"


@pytest.mark.parametrize("architecture, bits, group_size, symmetric, actorder, fmt", [
    ("LlamaForCausalLM", 4, 32, True, None, PACKED), ("Qwen2ForCausalLM", 4, 32, False, None, PACKED),
    ("Qwen3ForCausalLM", 4, -1, True, None, PACKED), ("LlamaForCausalLM", 8, 16, True, None, PACKED),
    ("LlamaForCausalLM", 8, -1, True, None, PACKED), ("Qwen2ForCausalLM", 4, 32, True, "group", PACKED),
    ("Qwen2ForCausalLM", 8, -1, True, None, "int-quantized")],
    ids=["w4a16-sym", "w4a16-asym", "w4a16-channel", "w8a16", "w8a16-channel", "w4a16-actorder", "w8a8"])
def test_a_checkpoint_matches_transformers_on_what_its_codes_stand_for(tiny_model_dir, tmp_path, architecture, bits,
                                                                        group_size, symmetric, actorder, fmt):
    quantized_dir, reference_dir = write_checkpoint(tiny_model_dir(architecture), tmp_path, bits, group_size,
                                                    symmetric, actorder, fmt)
    model = load_model(quantized_dir).model
    codes = torch.uint8 if bits == 4 else torch.int8
    assert all(linear.weight.dtype == codes for linear in model.decoder_linears())
    assert all((linear.input_order is not None) == (actorder == "group") for linear in model.decoder_linears())
    ids, logits = paged_greedy(model, PROMPTS, 4)
    hf_ids, hf_logits = hf_greedy(reference_dir, PROMPTS, 4)
    assert_logits_close(logits, hf_logits)
    assert ids == hf_ids


def changed(**weights) -> dict:
    config = quantization_config()
    config["config_groups"]["group_0"]["weights"].update(weights)
    return config


def two_schemes() -> dict:
    config = quantization_config()
    config["config_groups"]["group_1"] = copy.deepcopy(config["config_groups"]["group_0"])
    config["config_groups"]["group_1"]["weights"]["num_bits"] = 8
    return config


@pytest.mark.parametrize("config, message", [
    (quantization_config() | {"format": "marlin-24"}, "format 'marlin-24'; kvserve reads integer weights "
                                                       r"'pack-quantized' or \(8 bits\) 'int-quantized'"),
    (quantization_config() | {"format": "mixed-precision"}, "format 'mixed-precision'"),
    (quantization_config() | {"format": "int-quantized"}, "4-bit weights 'int-quantized'; kvserve reads them "
                                                           "'pack-quantized'"),
    (quantization_config() | {"ignore": ["lm_head", "model.layers.0.mlp.down_proj"]}, "only the LM head ignored"),
    (changed(num_bits=2), "config group 'group_0' quantizes weights as .*4- and 8-bit integer weights"),
    (changed(strategy="tensor"), "with a scale a group or a row"),
    (changed(num_bits=8, symmetric=False), "asymmetric 8-bit weights"),
    (changed(actorder="dynamic"), "actorder 'dynamic'"),
    (changed(group_size=48), "group_size 48; kvserve reads 4-bit groups of a multiple of 32"),
    (two_schemes(), "2 weight schemes in config_groups"),
])
def test_what_kvserve_does_not_read_is_refused_by_name(config, message):
    assert checkpoint_quantization(quantization_config()) == "compressed-tensors"
    with pytest.raises(ValueError, match="kvserve cannot read this quantized checkpoint: .*" + message):
        checkpoint_quantization(config)


def test_a_config_groups_own_format_is_read():
    config = quantization_config() | {"format": "mixed-precision"}  # newer writers name it in each group
    config["config_groups"]["group_0"]["format"] = "pack-quantized"
    assert checkpoint_quantization(config) == "compressed-tensors"


def test_quantized_outputs_and_other_targets_are_refused():
    config = quantization_config()
    config["config_groups"]["group_0"]["output_activations"] = dict(num_bits=8, type="int")
    with pytest.raises(ValueError, match="quantizes outputs; kvserve reads schemes that quantize weights"):
        checkpoint_quantization(config)
    config = quantization_config()
    config["config_groups"]["group_0"]["targets"] = ["re:.*mlp.*"]
    with pytest.raises(ValueError, match=r"targets \['re:\.\*mlp\.\*'\]; kvserve reads schemes that target"):
        checkpoint_quantization(config)


def test_packed_values_must_fit_the_weights_shape(tiny_model_dir, tmp_path):
    quantized_dir, _ = write_checkpoint(tiny_model_dir("LlamaForCausalLM"), tmp_path)
    tensors = load_file(quantized_dir / "model.safetensors")
    tensors["model.layers.1.mlp.up_proj.weight_shape"] = torch.tensor([96, 128], dtype=torch.int32)
    save_file(tensors, quantized_dir / "model.safetensors")
    with pytest.raises(ValueError, match="up_proj: its compressed-tensors tensors do not fit together: weight_packed "
                                         "holds"):
        load_model(quantized_dir)


def test_a_symmetric_schemes_stored_zero_points_must_be_zeros(tiny_model_dir, tmp_path):
    quantized_dir, _ = write_checkpoint(tiny_model_dir("LlamaForCausalLM"), tmp_path, 8, -1, fmt="int-quantized")
    tensors = load_file(quantized_dir / "model.safetensors")
    tensors["model.layers.0.self_attn.o_proj.weight_zero_point"][3] = 1
    save_file(tensors, quantized_dir / "model.safetensors")
    with pytest.raises(ValueError, match="o_proj.weight_zero_point: zero points other than 0 in a symmetric scheme"):
        load_model(quantized_dir)
