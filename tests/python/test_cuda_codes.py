"""Quantized weights on a CUDA GPU: the products over uint4, int8 and e4m3 codes (few rows, and tiled
past 32) against float64 over each code's value rounded to the dtype, the widening kernel bit for bit against the
reference, a layer's two paths (the kernel at few rows, cuBLAS on a widened copy past them), and
GPTQ, AWQ, compressed-tensors, GGUF and fp8 models on the GPU against transformers and the CPU. Skipped without a GPU
(the kernels themselves run on the CPU under the GPU emulator: tests/cpp/test_gpu_linear_codes_emulated.cpp and
test_gpu_linear_tiles_emulated.cpp)."""

import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType

from kvserve import Engine, SamplingParams, ops
from kvserve.int8 import dequantize_int8, quantize_int8
from kvserve.loader import load_model
from kvserve.models.layers.linear import CUDA_CODES_MAX_ROWS, Linear
from kvserve.quantization import dequantize_fp8, quantize_fp8
from kvserve.uint4 import dequantize_uint4, quantize_uint4
from paged_greedy import paged_greedy
from requires_cuda import requires_cuda
from test_engine import GREEDY, assert_no_blocks_held
from test_engine import PROMPTS as ENGINE_PROMPTS
from test_gptq_awq import write_checkpoint
from test_models import PROMPTS, assert_logits_close, hf_greedy

pytestmark = requires_cuda

KINDS = ("uint4", "int8", "e4m3")
HALF_DTYPES = (torch.bfloat16, torch.float16)


def quantized(kind: str, weight: torch.Tensor):
    """(codes, scale, offset or None, the weight they stand for in float32, as the product widens it
    before rounding to the dtype; e4m3: the codes' values, its rows' scales applied to the sums)."""
    if kind == "uint4":
        codes, scale, offset = quantize_uint4(weight)
        return codes, scale, offset, dequantize_uint4(codes, scale, offset, torch.float32)
    if kind == "int8":
        codes, scale = quantize_int8(weight)
        return codes, scale, None, dequantize_int8(codes, scale, torch.float32)
    codes, scale = quantize_fp8(weight)
    return codes, scale, None, codes.float()


def cuda(*tensors):
    return [None if t is None else t.cuda() for t in tensors]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("rows", [1, 3, 8, 13, 32, 33, 100, 300])
@pytest.mark.parametrize("shape", [(48, 512), (17, 1056), (6144, 4096)])
def test_linear_over_codes_matches_float64(kind, dtype, rows, shape):
    """Output features past the kernel's 16-row blocks, input features of many 32-column steps, a
    decode projection's shape; the few-rows kernel's 1 to 4 groups of 8 input rows a block, and the
    tiled kernel's rows past 32 (in_features split across blocks where the tiles are few); bias or not."""
    torch.manual_seed(rows * 1000 + shape[0])
    out_features, in_features = shape
    codes, scale, offset, values = quantized(kind, 0.2 * torch.randn(out_features, in_features))
    x = torch.randn(rows, in_features).to(dtype)
    bias = torch.randn(out_features).to(dtype)
    row_scale = scale.double()[None, :] if kind == "e4m3" else 1.0
    for b in (None, bias):
        out = torch.full((rows, out_features), float("nan"), dtype=dtype, device="cuda")
        ops.linear(out, *cuda(x, codes, b), weight_scale=scale.cuda(), weight_offset=cuda(offset)[0])
        expected = (x.double() @ values.to(dtype).double().t()) * row_scale + (0 if b is None else b.double())
        torch.testing.assert_close(out.cpu().double(), expected, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, *HALF_DTYPES], ids=str)
def test_dequantize_weight_on_cuda_gives_the_references_bits(kind, dtype):
    """Each value in float32 (uint4: one rounding of code * scale + offset), rounded once to the dtype:
    the bits of the CPU's reference."""
    torch.manual_seed(1)
    codes, scale, offset, values = quantized(kind, torch.randn(40, 1024))
    expected = dequantize_fp8(codes, scale, dtype) if kind == "e4m3" else values.to(dtype)
    out = torch.full((40, 1024), float("nan"), dtype=dtype, device="cuda")
    ops.dequantize_weight(out, *cuda(codes, scale, offset))
    assert torch.equal(out.cpu(), expected)


@pytest.mark.parametrize("kind", KINDS)
def test_a_layer_of_codes_takes_the_kernels_then_cublas_past_them(kind):
    """A [gate; up] projection of codes: its product and its silu_and_mul at 3 and 20 rows (the few-rows
    kernel, its SiLU-and-mul fused; 20 rows as 3 groups of 8), at 50 and 200 (the tiled kernel) and
    past CUDA_CODES_MAX_ROWS (cuBLAS over the widened weight) against the widened weight's."""
    torch.manual_seed(2)
    layer = Linear(256, (96, 96), bias=True, dtype=torch.bfloat16).cuda()
    codes, scale, offset, _ = quantized(kind, 0.1 * torch.randn(192, 256))
    layer.prepare_codes(codes, scale, offset)
    layer.bias.data.copy_(torch.randn(192))
    widened = torch.empty(192, 256, dtype=torch.bfloat16, device="cuda")
    ops.dequantize_weight(widened, layer.weight, layer.weight_scale, layer.weight_offset)
    for rows in (3, 20, 50, 200, CUDA_CODES_MAX_ROWS + 8):
        x = torch.randn(rows, 256, device="cuda").bfloat16()
        expected = F.linear(x.float(), widened.float(), layer.bias.float())
        torch.testing.assert_close(layer(x).float(), expected, rtol=2e-2, atol=2e-2)
        gate, up = expected.split(96, dim=-1)
        torch.testing.assert_close(layer.forward_silu_and_mul(x).float(), F.silu(gate) * up, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("method, bits, act_order", [("gptq", 4, False), ("awq", 4, False), ("gptq", 8, False),
                                                     ("gptq", 4, True)])
@pytest.mark.parametrize("enforce_eager", [False, True], ids=["graphs", "eager"])
def test_gptq_and_awq_checkpoints_on_the_gpu_give_transformers_ids(tiny_model_dir, tmp_path, method, bits, act_order,
                                                                   enforce_eager):
    """In float32 (prefill and decode widen the codes for cuBLAS: the weights transformers runs); act-order
    GPTQ gathering each product's input in its order."""
    quantized_dir, reference_dir = write_checkpoint(tiny_model_dir("LlamaForCausalLM"), tmp_path, method, 32, bits,
                                                    act_order)
    engine = Engine(str(quantized_dir), dtype="float32", device="cuda", kv_cache_memory_gb=0.05,
                    enforce_eager=enforce_eager)
    codes = torch.uint8 if bits == 4 else torch.int8
    assert all(linear.weight.dtype == codes for linear in engine.runner.model.decoder_linears())
    outputs = engine.generate(ENGINE_PROMPTS, GREEDY, use_tqdm=False)
    hf_ids, _ = hf_greedy(reference_dir, [o.prompt_token_ids for o in outputs], GREEDY.max_tokens)
    assert [o.outputs[0].token_ids for o in outputs] == hf_ids
    assert_no_blocks_held(engine)


@pytest.mark.parametrize("bits, act_order", [(4, False), (8, False), (4, True)])
@pytest.mark.parametrize("count", [3, 20])
def test_a_gptq_checkpoint_in_bfloat16_on_the_gpu_is_close_to_its_widened_weights(tiny_model_dir, tmp_path, bits,
                                                                                  act_order, count):
    """Decode steps of 3 and 20 rows on the few-rows kernel over codes (its fusions with rotary and
    SiLU-and-mul too; 20 rows as 3 groups of 8), 20 prompts' prefill (111 rows) on the tiled kernel:
    logits within bfloat16's reach of transformers over the weights the codes stand for."""
    quantized_dir, reference_dir = write_checkpoint(tiny_model_dir("LlamaForCausalLM"), tmp_path, "gptq", 32, bits,
                                                    act_order)
    model = load_model(quantized_dir, dtype="bfloat16", device="cuda").model
    prompts = [list(p) for p in (PROMPTS[:3] * 7)[:count]]
    _, logits = paged_greedy(model, prompts, 2, device="cuda")
    hf_ids, hf_logits = hf_greedy(reference_dir, prompts, 2)
    for ours, theirs in zip(logits, hf_logits):
        for a, b in zip(ours, theirs):
            error = ((a - b).abs().max() / b.abs().max()).item()
            assert error < 5e-2, f"logits differ by {error:.3f} of their largest magnitude"


@pytest.mark.parametrize("tensor_type, mixed", [(GGMLQuantizationType.Q4_0, False), (GGMLQuantizationType.Q8_0, False),
                                                (GGMLQuantizationType.Q4_0, True)], ids=["q4_0", "q8_0", "mixed"])
def test_a_gguf_file_keeps_its_codes_on_the_gpu_and_gives_the_cpus_ids(gguf_pair, tensor_type, mixed):
    """Its blocks load as codes on the GPU as on the CPU (tied embeddings too; "mixed": Q8_0 v and up
    projections beside Q4_0 ones, fused projections in parts); in float32 both give the same ids,
    logits within 1e-4."""
    finer = {"attn_v": GGMLQuantizationType.Q8_0, "ffn_up": GGMLQuantizationType.Q8_0} if mixed else None
    _, path = gguf_pair("Qwen2ForCausalLM", tensor_type, finer, tie_word_embeddings=True)
    on_gpu = load_model(path, dtype="float32", device="cuda").model
    on_cpu = load_model(path, dtype="float32").model
    codes = torch.uint8 if tensor_type == GGMLQuantizationType.Q4_0 else torch.int8
    gate_up = on_gpu.model.layers[0].mlp.gate_up_proj
    assert (gate_up.parts[0] if mixed else gate_up).weight.dtype == codes
    assert on_gpu.model.embed_tokens.weight.is_cuda
    ids, logits = paged_greedy(on_gpu, PROMPTS, 4, device="cuda")
    cpu_ids, cpu_logits = paged_greedy(on_cpu, PROMPTS, 4)
    assert_logits_close(logits, cpu_logits)
    assert ids == cpu_ids


def test_fp8_quantization_runs_on_the_gpu(tiny_model_dir):
    """quantization="fp8" on CUDA: e4m3 codes in every decoder projection; in float32 the ids of the
    CPU's fp8 model (both widen the same codes exactly), in bfloat16 an engine with graphs generates."""
    directory = tiny_model_dir("LlamaForCausalLM")
    on_gpu = load_model(directory, dtype="float32", device="cuda", quantization="fp8").model
    on_cpu = load_model(directory, dtype="float32", quantization="fp8").model
    assert all(linear.weight.dtype == torch.float8_e4m3fn for linear in on_gpu.decoder_linears())
    ids, logits = paged_greedy(on_gpu, PROMPTS, 4, device="cuda")
    cpu_ids, cpu_logits = paged_greedy(on_cpu, PROMPTS, 4)
    assert_logits_close(logits, cpu_logits)
    assert ids == cpu_ids
    engine = Engine(str(directory), dtype="bfloat16", device="cuda", quantization="fp8", kv_cache_memory_gb=0.05)
    outputs = engine.generate(["hello there"], SamplingParams(max_tokens=8, ignore_eos=True), use_tqdm=False)
    assert len(outputs[0].outputs[0].token_ids) == 8


@pytest.mark.parametrize("symmetric, actorder", [(True, "group"), (False, None)])
def test_a_compressed_tensors_checkpoint_on_the_gpu_gives_transformers_ids(tiny_model_dir, tmp_path, symmetric,
                                                                           actorder):
    """llm-compressor's W4A16 weights (kvserve.loader.compressed_tensors) on the GPU, in float32."""
    from test_compressed_tensors import write_checkpoint as write_compressed

    quantized_dir, reference_dir = write_compressed(tiny_model_dir("Qwen2ForCausalLM"), tmp_path, 4, 32, symmetric,
                                                    actorder)
    model = load_model(quantized_dir, dtype="float32", device="cuda").model
    ids, logits = paged_greedy(model, PROMPTS, 4, device="cuda")
    hf_ids, hf_logits = hf_greedy(reference_dir, PROMPTS, 4)
    assert_logits_close(logits, hf_logits)
    assert ids == hf_ids
