"""bench/gpu_bench.py's and gpu_profile.py's bookkeeping that runs without a GPU: which part of a
decode step each kernel of a profile belongs to (names as CUPTI reports them, from the H100 runs),
each kernel's own share of overlapping activity, the host-time table of a profiled run, the
attention cases' syntax, the decode engines' shapes and their projections as codes."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.append(str(Path(__file__).resolve().parents[2] / "bench"))  # the scripts import each other
import gpu_bench  # noqa: E402
import gpu_common  # noqa: E402
import gpu_profile  # noqa: E402
from kvserve import Engine, SamplingParams  # noqa: E402
from kvserve.model_config import ModelConfig  # noqa: E402

KERNELS = {
    "void kvserve::gpu::attention_mma_kernel<kvserve::gpu::BFloat16, kvserve::gpu::MmaTile<kvserve::gpu::BFloat16, "
    "128, 16> >(kvserve::PagedAttentionParams, kvserve::gpu::SplitPartials)": "attention",
    "void kvserve::gpu::rotary_kernel<kvserve::gpu::BFloat16, 8, true>(kvserve::RotaryEmbeddingParams, "
    "kvserve::ReshapeAndCacheParams)": "rotary (+ cache write)",
    "void kvserve::(anonymous namespace)::reshape_and_cache_kernel<uint4>(kvserve::ReshapeAndCacheParams)":
        "cache write",
    "void kvserve::(anonymous namespace)::reshape_and_round_kernel<kvserve::gpu::BFloat16, kvserve::gpu::Float8E4M3>"
    "(kvserve::ReshapeAndCacheParams)": "cache write",
    "void kvserve::(anonymous namespace)::rms_norm_kernel<kvserve::gpu::BFloat16, 8, 256>(kvserve::RmsNormParams)":
        "rms norm",
    "void kvserve::(anonymous namespace)::silu_and_mul_kernel<kvserve::gpu::BFloat16, 8>(kvserve::SiluAndMulParams)":
        "silu and mul",
    "void kvserve::(anonymous namespace)::argmax_kernel<kvserve::gpu::BFloat16, 8>(kvserve::ArgmaxParams)":
        "sampler (argmax)",
    "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<c10::BFloat16, at::native::ArgMaxOps<float>, "
    "unsigned int, long, 4, 4> >(at::native::ReduceOp<c10::BFloat16, at::native::ArgMaxOps<float>, unsigned int, "
    "long, 4, 4>)": "sampler (argmax)",
    "void kvserve::(anonymous namespace)::linear_kernel<kvserve::gpu::BFloat16>(kvserve::LinearParams)":
        "linear (kvserve)",
    "nvjet_sm90_tst_224x64_64x5_2x1_v_bz_TNN": "linear (cuBLAS)",
    "void cublasLt::splitKreduce_kernel<32, 16, int, float, __nv_bfloat16, float, __nv_bfloat16, false>()":
        "linear (cuBLAS)",
    "Memcpy HtoD (Pinned -> Device)": "copies",
    "void at::native::vectorized_gather_kernel<16, int>(char*, char*, int*, int, long, long, long, long, bool)":
        "other (torch)",
}


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_each_kernel_of_a_decode_step_has_its_part(kernel):
    assert gpu_profile.kernel_part(kernel) == KERNELS[kernel]


def test_overlapping_kernels_count_only_their_own_share_of_the_step():
    # b waits for a (launched programmatically, it started early); c runs alone; d lies inside c.
    activity = [("c", 30.0, 10.0), ("a", 0.0, 10.0), ("b", 4.0, 16.0), ("d", 32.0, 2.0)]
    assert gpu_profile.exclusive_times(activity) == [("a", 10.0), ("b", 10.0), ("c", 10.0), ("d", 0.0)]


def test_host_profile_lists_the_functions_by_own_time_per_step(monkeypatch):
    monkeypatch.setattr(gpu_profile.torch.cuda, "synchronize", lambda: None)

    def busy(n):
        return sum(i * i for i in range(n))

    class Engine:
        def step(self):
            busy(20000)

    lines = gpu_profile.host_profile(Engine(), steps=4)
    assert lines[0].split() == ["ms/step", "calls/step", "host", "function", "(cProfile,", "own", "time)"]
    first = lines[1].split()
    assert float(first[0]) > 0 and float(first[1]) >= 20000 and "genexpr" in first[2]


def test_attention_cases_name_batch_context_and_table():
    assert gpu_bench.attention_case("64x512") == (64, 512, 512)
    assert gpu_bench.attention_case("1x512/8192") == (1, 512, 8192)
    assert gpu_bench.attention_case("1x4096/1000") == (1, 4096, 4096)  # a table holds the context at least
    with pytest.raises(ValueError, match="expected BATCHxCONTEXT"):
        gpu_bench.attention_case("64:512")


@pytest.mark.parametrize("architecture, layers, model_type", [("llama", 32, "llama"), ("qwen3", 36, "qwen3")])
def test_decode_benchmark_engines_have_each_8b_shape(architecture, layers, model_type):
    config = json.loads(gpu_common.dummy_config(architecture))
    model = ModelConfig.from_hf_dicts(config)
    assert (config["model_type"], model.num_hidden_layers, model.num_key_value_heads, model.head_dim) == (
        model_type, layers, 8, 128)


@pytest.mark.parametrize("kind, codes", [("uint4", torch.uint8), ("int8", torch.int8), ("fp8", torch.float8_e4m3fn)])
def test_decode_benchmarks_put_codes_in_every_projection(tiny_model_dir, kind, codes):
    """--weights: the engine's decoder projections become codes of their weights, and it still generates."""
    engine = Engine(str(tiny_model_dir("LlamaForCausalLM")), dtype="bfloat16", device="cpu")
    gpu_common.quantize_decoder(engine, kind)
    assert {linear.weight.dtype for linear in engine.runner.model.decoder_linears()} == {codes}
    outputs = engine.generate(["hello there"], SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)
    assert len(outputs[0].outputs[0].token_ids) == 4
