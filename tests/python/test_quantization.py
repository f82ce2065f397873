"""Weight-only fp8 (quantization="fp8"): the quantizer, kvserve.ops.linear over e4m3 codes against
float64 (every code's value, both of the kernel's paths, every ISA), the checks on its arguments,
and each architecture against transformers running the weights the codes stand for."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from isa_paths import ISAS, run_tests_under_isa
from kvserve import Engine, SamplingParams, ops
from kvserve.loader import load_model
from kvserve.models import SUPPORTED_ARCHITECTURES
from kvserve.quantization import E4M3_MAX, check_quantization, checkpoint_quantization, dequantize_fp8, quantize_fp8
from paged_greedy import paged_greedy
from test_layer_ops import DTYPES
from test_models import NUM_NEW_TOKENS, PROMPTS, assert_logits_close, hf_greedy

# Every e4m3 code but the two NaNs, as uint8.
CODES = torch.tensor([c for c in range(256) if c & 0x7f != 0x7f], dtype=torch.uint8)


def test_quantize_fp8_maps_each_rows_largest_magnitude_to_448():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 40, generator=generator) * torch.tensor([1e-3, 0.1, 1, 10, 1e3, 0])[:, None]
    codes, scale = quantize_fp8(weight.bfloat16())
    assert codes.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32 and scale.shape == (6,)
    assert torch.equal(codes[:5].float().abs().amax(dim=1), torch.full((5,), E4M3_MAX))
    assert scale[5] == 1 and not codes[5].float().any()  # a row of zeros
    # Each weight within half a step of e4m3's grid (3 mantissa bits: 2^-4 of its magnitude) of its
    # code's value, subnormals within half the smallest step.
    restored = dequantize_fp8(codes, scale, torch.float32)
    error = (restored - weight.bfloat16().float()).abs()
    assert (error <= 2**-4 * weight.bfloat16().float().abs() + 2**-10 * scale[:, None]).all()
    assert torch.equal(codes.float(), (weight.bfloat16().float() / scale[:, None]).to(torch.float8_e4m3fn).float())


@pytest.mark.parametrize("bad, message", [
    (torch.tensor([[1.0, float("nan")]]), "NaN or infinite"),
    (torch.tensor([[float("inf"), 1.0]]), "NaN or infinite"),
    (torch.ones(3), r"expected a weight \[out_features, in_features\]"),
])
def test_quantize_fp8_refuses_what_has_no_codes(bad, message):
    with pytest.raises(ValueError, match=message):
        quantize_fp8(bad)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows", [1, 3, 16, 17, 70])
@pytest.mark.parametrize("shape", [(6, 40), (64, 256), (33, 100), (7, 101), (9, 4864)])
def test_linear_e4m3_weight(dtype, rows, shape):
    """Against float64 over the codes' values times their scales, on random data: up to 16 rows
    read the codes directly, more widen them first (bfloat16 on AVX512-BF16: input rows in the
    vector lanes, 32 a tile); in_features odd and even, with and without a tail past the vectors;
    with and without bias."""
    torch.manual_seed(rows * 1000 + shape[0])
    out_features, in_features = shape
    x = torch.randn(rows, in_features).to(dtype)
    codes, scale = quantize_fp8(0.2 * torch.randn(out_features, in_features))
    weight = codes.double() * scale.double()[:, None]
    for bias in (None, torch.randn(out_features).to(dtype)):
        out = torch.full((rows, out_features), float("nan"), dtype=dtype)
        ops.linear(out, x, codes, bias, weight_scale=scale)
        expected = x.double() @ weight.t() + (0 if bias is None else bias.double())
        if dtype != torch.float32:  # the 16-bit output's rounding dominates
            torch.testing.assert_close(out.double(), expected, rtol=1e-2, atol=1e-2)
            continue
        # As test_linear_ops.test_linear: a few sqrt(K) float32 roundings of sum |x w|.
        magnitude = x.double().abs() @ weight.abs().t() + (0 if bias is None else bias.double().abs())
        bound = 2.0 ** -23 * in_features ** 0.5 * magnitude
        assert ((out.double() - expected).abs() <= bound).all(), ((out.double() - expected).abs() / bound).max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("rows", [1, 17, 40])
def test_every_e4m3_code_reads_its_value(rows, dtype):
    """Weight row i holds code i in column i % 48 (zeros elsewhere: every column of the vectors and
    of the tail takes every code's turn), against inputs of ones: each output is the code's value
    times its scale, rounded to float32 (then to the dtype), subnormals and negative zero included."""
    in_features = 48 + 7
    weight = torch.zeros(len(CODES), in_features, dtype=torch.uint8)
    weight[torch.arange(len(CODES)), torch.arange(len(CODES)) % 48] = CODES
    weight[:, 48:] = weight[:, :7]  # the tail's columns (past 48) repeat the first 7
    codes = weight.view(torch.float8_e4m3fn)
    scale = torch.rand(len(CODES), generator=torch.Generator().manual_seed(1)) + 0.5
    x = torch.ones(rows, in_features, dtype=dtype)
    x[:, 48:] = 0  # the tail adds exact zeros
    out = torch.full((rows, len(CODES)), float("nan"), dtype=dtype)
    ops.linear(out, x, codes, None, weight_scale=scale)
    expected = (CODES.view(torch.float8_e4m3fn).double() * scale.double()).float().to(dtype)
    assert torch.equal(out, expected.expand(rows, -1))
    x[:, :48], x[:, 48:] = 0, 1  # and the tail alone: columns 48.. hold the codes of columns 0..6
    ops.linear(out, x, codes, None, weight_scale=scale)
    in_tail = torch.arange(len(CODES)) % 48 < 7
    assert torch.equal(out[:, in_tail], expected[in_tail].expand(rows, -1))
    assert not out[:, ~in_tail].any()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(5, 40), (64, 256), (3, 100)])
def test_dequantize_weight_gives_each_codes_value_times_its_scale(dtype, shape):
    """In float32, rounded to the dtype: the weight the codes stand for, as quantization.dequantize_fp8
    computes it (every code too, in the every-code weight)."""
    codes, scale = quantize_fp8(torch.randn(*shape, generator=torch.Generator().manual_seed(shape[1])))
    codes[0, : min(len(CODES), shape[1])] = CODES[: shape[1]].view(torch.float8_e4m3fn)
    out = torch.full(shape, float("nan"), dtype=dtype)
    ops.dequantize_weight(out, codes, scale)
    assert torch.equal(out, dequantize_fp8(codes, scale, dtype))


@pytest.mark.parametrize("change, message", [
    (dict(weight=torch.ones(4, 8).bfloat16()), r"weight: expected dtype float8_e4m3fn"),
    (dict(out=torch.empty(4, 9)), r"weight: dimension 1 must be in_features of out = 9"),
    (dict(scale=torch.ones(4, dtype=torch.float64)), r"weight_scale: expected dtype float32"),
    (dict(out=torch.empty(4, 8, dtype=torch.int32)), r"out: expected dtype"),
])
def test_dequantize_weight_checks_its_arguments(change, message):
    arrays = {"out": torch.empty(4, 8), "weight": torch.ones(4, 8).to(torch.float8_e4m3fn), "scale": torch.ones(4),
              **change}
    with pytest.raises(ValueError, match=message):
        ops.dequantize_weight(arrays["out"], arrays["weight"], arrays["scale"])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows, in_features", [(3, 96), (40, 96), (260, 96), (40, 8192)])
def test_a_quantized_layer_multiplies_by_the_weight_its_codes_stand_for(dtype, rows, in_features, monkeypatch):
    """Linear.quantize_fp8, then products of decode and prefill sizes: from 256 rows (or from 512 KiB
    of input rows) the whole weight is widened for oneDNN's GEMM where oneDNN takes the dtype,
    everything else takes ops.linear."""
    from kvserve.models.layers import linear as linear_module

    layer = linear_module.Linear(in_features, (64, 32), True, dtype)
    generator = torch.Generator().manual_seed(rows)
    layer.weight.copy_(torch.randn(96, in_features, generator=generator) / in_features**0.5)
    layer.bias.copy_(torch.randn(96, generator=generator))
    layer.quantize_fp8()
    layer.finalize_weights()
    assert layer.packed is None and layer.interleaved is None and layer.weight.dtype == torch.float8_e4m3fn
    widened = []
    dequantize = ops.dequantize_weight
    monkeypatch.setattr(linear_module.ops, "dequantize_weight", lambda *args: widened.append(1) or dequantize(*args))
    x = torch.randn(rows, in_features, generator=generator).to(dtype)
    expected = x.double() @ dequantize_fp8(layer.weight, layer.weight_scale, torch.float64).T + layer.bias.double()
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-2, atol=2e-2)
    long_rows = rows * in_features * x.element_size() > linear_module.DENSE_INPUT_BYTES
    dense = (rows >= 256 or long_rows) and linear_module.onednn_packs(dtype)
    assert widened == ([1] if dense else [])


@pytest.mark.parametrize("isa", ISAS)
def test_every_isa_path(isa):
    names = ("test_linear_e4m3_weight", "test_every_e4m3_code_reads_its_value",
             "test_dequantize_weight_gives_each_codes_value_times_its_scale")
    run_tests_under_isa(isa, [f"{__file__}::{name}" for name in names])


@pytest.mark.parametrize("change, message", [
    (dict(scale=None), "linear: weight_scale is required with a float8_e4m3fn weight"),
    (dict(weight=torch.randn(8, 64).bfloat16()),
     "linear: weight_scale and weight_offset are for quantized weights, the weight is of the input's dtype"),
    (dict(scale=torch.ones(7)), r"weight_scale: dimension 0 must be out_features of the weight"),
    (dict(scale=torch.ones(8).bfloat16()), r"weight_scale: expected dtype float32"),
    (dict(weight=torch.randn(8, 64).to(torch.float8_e5m2)),
     r"weight: expected the dtype of input \(bfloat16\), float8_e4m3fn codes"),
    (dict(weight=torch.randn(2, 2, 4, 32).to(torch.float8_e4m3fn)),
     r"a quantized weight is read plain, not interleaved"),
])
def test_linear_checks_a_quantized_weights_arguments(change, message):
    x, out = torch.randn(2, 64).bfloat16(), torch.empty(2, 8, dtype=torch.bfloat16)
    weight = change.get("weight", torch.randn(8, 64).to(torch.float8_e4m3fn))
    scale = change.get("scale", torch.ones(8))
    with pytest.raises(ValueError, match=message):
        ops.linear(out, x, weight, None, weight_scale=scale)


def test_check_quantization():
    for method in (None, "fp8", "gptq", "awq", "compressed-tensors", "gguf"):
        assert check_quantization(method) == method
    assert check_quantization("gptq_marlin") == "gptq" and check_quantization("awq_marlin") == "awq"
    with pytest.raises(ValueError, match=r"must be one of \['fp8', 'gptq', 'awq', 'compressed-tensors', 'gguf'\] "
                                         r"\(or vLLM's \['gptq_marlin', 'awq_marlin'\]\) or None, got 'bitsandbytes'"):
        check_quantization("bitsandbytes")


def save_dequantized(directory, destination):
    """The checkpoint in `directory` with each decoder projection's weight replaced by what its fp8
    codes stand for (float32), as kvserve quantizes it, saved to `destination`."""
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    with torch.no_grad():
        for name, module in model.model.layers.named_modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(dequantize_fp8(*quantize_fp8(module.weight), torch.float32))
    model.save_pretrained(destination)
    return destination


@pytest.mark.parametrize("architecture", SUPPORTED_ARCHITECTURES)
def test_matches_transformers_on_the_dequantized_weights(tiny_model_dir, tmp_path, architecture):
    """Greedy ids equal, and logits within 1e-4, transformers' over the weights the codes stand for;
    prefill (33 rows: the panels) and decode steps of 4 (the decoder stack, reading codes)."""
    directory = tiny_model_dir(architecture)
    model = load_model(directory, dtype="float32", quantization="fp8").model
    assert model.model.layers[0].mlp.down_proj.weight.dtype == torch.float8_e4m3fn
    ids, logits = paged_greedy(model, PROMPTS, NUM_NEW_TOKENS)
    hf_ids, hf_logits = hf_greedy(save_dequantized(directory, tmp_path / "dequantized"), PROMPTS, NUM_NEW_TOKENS)
    assert_logits_close(logits, hf_logits)
    assert ids == hf_ids
    # The quantization shows in the logits: against the unquantized model the comparison fails.
    _, exact_logits = hf_greedy(directory, PROMPTS, NUM_NEW_TOKENS)
    with pytest.raises(AssertionError, match="max relative error"):
        assert_logits_close(logits, exact_logits)


def test_an_engine_quantizes_its_decoder_and_keeps_the_rest(tiny_model_dir):
    engine = Engine(tiny_model_dir("LlamaForCausalLM"), dtype="bfloat16", quantization="fp8", device="cpu")
    model = engine.runner.model
    for name, parameter in model.named_parameters():
        projection = ".layers." in name and name.endswith("proj.weight")
        assert (parameter.dtype == torch.float8_e4m3fn) == projection, name
    outputs = engine.generate(["hello there"], SamplingParams(max_tokens=8, ignore_eos=True), use_tqdm=False)
    assert len(outputs[0].outputs[0].token_ids) == 8


def test_a_server_with_fp8_weights_answers_as_the_offline_engine(tiny_model_dir):
    """kvserve serve --quantization fp8: its log says what it quantized, and a greedy completion over
    the OpenAI API is the offline engine's with the same flag."""
    import openai

    from server_process import ServerProcess

    directory = tiny_model_dir("LlamaForCausalLM")
    engine = Engine(directory, dtype="float32", quantization="fp8", device="cpu")
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    expected = engine.generate(["hello there"], params, use_tqdm=False)[0].outputs[0].text
    with ServerProcess(directory, "--quantization", "fp8") as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
        reply = client.completions.create(model=client.models.list().data[0].id, prompt="hello there", max_tokens=12,
                                          temperature=0, extra_body={"ignore_eos": True})
        assert reply.choices[0].text == expected
        assert any("quantization fp8: " in line for line in server.log)


def save_fp8_checkpoint(directory, destination, quantization_config, strategy):
    """The tiny checkpoint in `directory` with each decoder projection's weight as e4m3 codes and
    its weight_scale (strategy "tensor": one, [] for quant_method "fp8" and [1] for compressed-tensors;
    "channel": one a row, [N, 1]), and an input_scale beside it, as llm-compressor writes them; and
    beside it the weights those codes stand for, in float32, for transformers to run."""
    from safetensors.torch import load_file, save_file

    tensors, dequantized = load_file(directory / "model.safetensors"), {}
    for name in [name for name in tensors if ".layers." in name and name.endswith("proj.weight")]:
        weight = tensors[name].float()
        if strategy == "channel":
            codes, scale = quantize_fp8(weight)
            stored = scale[:, None]
        else:
            scale = weight.abs().max() / E4M3_MAX
            codes = (weight / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
            stored = scale.reshape([] if quantization_config["quant_method"] == "fp8" else [1])
            scale = scale.expand(weight.shape[0])
        tensors[name] = codes
        tensors[name.removesuffix("weight") + "weight_scale"] = stored.contiguous()
        tensors[name.removesuffix("weight") + "input_scale"] = torch.tensor([0.5])
        dequantized[name] = dequantize_fp8(codes, scale, torch.float32)
    destination.mkdir()
    save_file(tensors, destination / "model.safetensors")
    config = json.loads((directory / "config.json").read_text())
    (destination / "config.json").write_text(json.dumps({**config, "quantization_config": quantization_config}))
    reference = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    reference.load_state_dict(dequantized, strict=False)
    reference.save_pretrained(destination / "dequantized")
    return destination, destination / "dequantized"


FP8_CHECKPOINTS = {
    "fp8": ({"quant_method": "fp8", "activation_scheme": "static"}, "tensor"),
    "compressed-tensors tensor": ({"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups": {
        "group_0": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "float", "strategy": "tensor"}}}},
        "tensor"),
    "compressed-tensors channel": ({"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups": {
        "group_0": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "float", "strategy": "channel"},
                    "input_activations": {"num_bits": 8, "type": "float", "dynamic": True}}}}, "channel"),
}


@pytest.mark.parametrize("kind", FP8_CHECKPOINTS)
def test_an_fp8_checkpoint_loads_its_codes_and_matches_transformers(tiny_model_dir, tmp_path, kind):
    """vLLM's and llm-compressor's fp8 checkpoints: the codes load as they are (the fused qkv's rows
    each with its projection's scale), and greedy ids equal transformers' over the weights they
    stand for; the activation scales are not used."""
    from safetensors.torch import load_file

    quantization_config, strategy = FP8_CHECKPOINTS[kind]
    directory, dequantized = save_fp8_checkpoint(tiny_model_dir("Qwen2ForCausalLM"), tmp_path / "fp8",
                                                 quantization_config, strategy)
    loaded = load_model(directory, dtype="float32")
    assert loaded.model_config.weight_quantization == "fp8"
    tensors = load_file(directory / "model.safetensors")
    qkv = loaded.model.model.layers[1].self_attn.qkv_proj
    parts = [f"model.layers.1.self_attn.{p}_proj" for p in "qkv"]
    assert torch.equal(qkv.weight.view(torch.uint8), torch.cat([tensors[f"{p}.weight"] for p in parts]).view(torch.uint8))
    expected_scales = [tensors[f"{p}.weight_scale"].reshape(-1).expand(tensors[f"{p}.weight"].shape[0]) for p in parts]
    assert torch.equal(qkv.weight_scale, torch.cat(expected_scales))
    ids, logits = paged_greedy(loaded.model, PROMPTS, NUM_NEW_TOKENS)
    hf_ids, hf_logits = hf_greedy(dequantized, PROMPTS, NUM_NEW_TOKENS)
    assert_logits_close(logits, hf_logits)
    assert ids == hf_ids


@pytest.mark.parametrize("quantization_config, message", [
    ({"quant_method": "fp8", "weight_block_size": [128, 128]}, "block-wise scales"),
    ({"quant_method": "compressed-tensors", "config_groups": {"g": {"weights": {"num_bits": 4, "type": "float",
                                                                               "strategy": "group"}}}},
     r"config group 'g' quantizes weights as .*; kvserve reads 8-bit float weights with a scale a tensor or a row, "
     r"and 4- and 8-bit integer ones"),
    ({"quant_method": "compressed-tensors", "config_groups": {}, "kv_cache_scheme": {"num_bits": 8}},
     "KV-cache scales"),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True},
     r"\(method 'bitsandbytes'\); expected an unquantized checkpoint"),
])
def test_checkpoint_quantizations_kvserve_cannot_read_are_refused(quantization_config, message):
    with pytest.raises(ValueError, match=r"kvserve cannot read this quantized checkpoint: .*" + message):
        checkpoint_quantization(quantization_config)


def test_lora_adapters_on_fp8_weights_match_peft_on_the_weights_they_stand_for(tiny_model_dir, tmp_path):
    """An adapter's deltas add to a product over codes as to any other: the decoder stack's steps and
    the layers' alike (a batch of one adapter, and of an adapter beside the base model)."""
    from kvserve import LoRARequest
    from test_lora import PROMPTS as LORA_PROMPTS
    from test_lora import kvserve_ids, peft_greedy, save_adapter

    base = tiny_model_dir("LlamaForCausalLM")
    dequantized = save_dequantized(base, tmp_path / "dequantized")
    lora = LoRARequest("first", 1, save_adapter(base, tmp_path / "first", seed=1))
    expected = {None: peft_greedy(dequantized, None, LORA_PROMPTS), lora: peft_greedy(dequantized, lora.lora_path,
                                                                                       LORA_PROMPTS)}
    engine = Engine(str(base), dtype="float32", kv_cache_memory_gb=0.01, block_size=4, enable_lora=True,
                    quantization="fp8")
    for loras in ([lora] * len(LORA_PROMPTS), [None, lora] * (len(LORA_PROMPTS) // 2)):
        assert kvserve_ids(engine, LORA_PROMPTS, loras) == [expected[r][i] for i, r in enumerate(loras)], loras
