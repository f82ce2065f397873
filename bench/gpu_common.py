"""What bench/gpu_bench.py's GPU benchmarks share (gpu_profile.py too): the Llama-3.1-8B shape they
run, JSON lines out, CUDA-event and CUDA-graph timings, the copy bandwidth that sets every floor, an
engine of random 8B weights (its projections as quantized codes, if asked) and the decode steps
timed on it."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from kvserve import Engine, SamplingParams
from kvserve.bench.checkpoint import hf_config
from kvserve.bench.presets import model_preset
from kvserve.int8 import quantize_int8
from kvserve.quantization import quantize_fp8
from kvserve.uint4 import quantize_uint4

PRESET = model_preset("8b")
HEADS, KV_HEADS, HEAD_DIM, BLOCK = PRESET.num_attention_heads, PRESET.num_key_value_heads, PRESET.head_dim, 16
DTYPE = torch.bfloat16
# The projections' weights a benchmark runs on: the dtype's, or codes as quantized checkpoints load
# them: uint4 (GPTQ, AWQ, GGUF Q4 blocks), int8 (8-bit GPTQ, GGUF Q8_0/Q6_K), fp8 (quantization="fp8").
WEIGHTS = ("bf16", "uint4", "int8", "fp8")


def weight_codes(weight: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(codes, scale, offset or None): `weight` as `kind` codes (WEIGHTS, not "bf16")."""
    if kind == "uint4":
        return quantize_uint4(weight)
    codes, scale = (quantize_int8 if kind == "int8" else quantize_fp8)(weight)
    return codes, scale, None


def quantize_decoder(engine: Engine, kind: str) -> None:
    """The engine's decoder projections as `kind` codes of their weights ("bf16": left as they are),
    and its CUDA graphs captured again over them."""
    if kind == "bf16":
        return
    model = engine.runner.model
    for linear in model.decoder_linears():
        linear.prepare_codes(*weight_codes(linear.weight, kind))
    model.finalize_weights()
    graphs = getattr(engine.runner, "graphs", None)  # a CPU runner has none
    if graphs is not None:
        graphs.capture()


def record(path: Path, **fields) -> None:
    fields = {k: round(v, 4) if isinstance(v, float) else v for k, v in fields.items()}
    print(json.dumps(fields), flush=True)
    with path.open("a") as f:
        f.write(json.dumps(fields) + "\n")


def cuda_ms(fn, repeat: int = 30, warmup: int = 3, before=None) -> float:
    """Median milliseconds of fn() by CUDA events; fn(i) gets the repetition index. `before()`, if
    given, is queued ahead of each call, outside the timed span."""
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if before is not None:
            before()
        start.record()
        fn(i)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth() -> float:
    """Bytes per second of a 1 GiB device-to-device copy, reads plus writes."""
    src = torch.randn(2**28, device="cuda")
    dst = torch.empty_like(src)
    ms = cuda_ms(lambda i: dst.copy_(src), repeat=10)
    return 2 * src.numel() * 4 / (ms / 1e3)


def l2_overwriter():
    """A function that overwrites the GPU's whole L2 (twice its size in writes), so that the call timed
    after it finds its code, metadata and data in memory, as a decode step's calls do after a
    layer's weights streamed through the L2."""
    junk = torch.empty(2 * torch.cuda.get_device_properties(0).L2_cache_size, dtype=torch.uint8, device="cuda")
    return lambda: junk.fill_(1)


def graph_ms(call, calls: int) -> float:
    """Milliseconds per call of call(i), i = 0..calls-1, captured in one CUDA graph and replayed: the
    kernels' time as a graphed decode step runs them, without the host's cost per launch. One eager
    round first: cuBLAS and the attention's split workspace allocate outside the capture."""
    for i in range(calls):
        call(i)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            call(i)
    return cuda_ms(lambda i: graph.replay()) / calls


# Qwen3-8B's shape where it differs from Llama-3.1-8B's: q and k normed per head before the rotation.
QWEN3_8B = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "intermediate_size": 12288,
            "num_hidden_layers": 36, "vocab_size": 151936, "max_position_embeddings": 40960,
            "rope_theta": 1000000.0, "rms_norm_eps": 1e-6}
ARCHITECTURES = {"llama": {}, "qwen3": QWEN3_8B}


def dummy_config(architecture: str = "llama") -> str:
    """config.json of Llama-3.1-8B's shape, or Qwen3-8B's (`architecture` "qwen3")."""
    return json.dumps(hf_config(PRESET) | ARCHITECTURES[architecture])


def dummy_8b_engine(directory: Path, architecture: str = "llama", **kwargs) -> Engine:
    """An engine of random weights (load_format "dummy") of dummy_config(architecture)'s shape."""
    (directory / "config.json").write_text(dummy_config(architecture))
    return Engine(str(directory), dtype="bfloat16", load_format="dummy", skip_tokenizer_init=True, device="cuda",
                  **kwargs)


PROMPT_RNG = np.random.default_rng(0)  # each run's prompts differ: no prefix-cache hits between runs


def decode_runs(engine: Engine, batches: list[int], context: int, steps: int, tag: str,
                modes: tuple[str, ...] | None = None):
    """For each batch size, with the CUDA graphs and eagerly, and with the graphs but each step
    scheduled after the tokens of the one before ("graphs_not_ahead", on trees with async
    scheduling), or only `modes`: `batch` greedy requests of `context` random prompt tokens,
    prefilled, with `steps` tokens left to decode; yields (batch, mode) while they run, then aborts
    them. The engine's graphs and scheduling are restored at the end."""
    graphs = engine.runner.graphs
    ahead = getattr(engine, "async_scheduling", None)
    modes = modes or ("graphs", "eager") + (("graphs_not_ahead",) if ahead else ())
    params = SamplingParams(temperature=0, max_tokens=steps + 1, ignore_eos=True)
    try:
        for batch in batches:
            for mode in modes:
                engine.runner.graphs = None if mode == "eager" else graphs
                if ahead is not None:
                    engine.async_scheduling = ahead and mode != "graphs_not_ahead"
                ids = [f"{tag}-{mode}-{batch}-{i}" for i in range(batch)]
                for request_id, prompt in zip(ids, PROMPT_RNG.integers(10, 31999, (batch, context))):
                    engine.add_request(request_id, {"prompt_token_ids": prompt.tolist()}, params)
                while any(not r.sequences[0].token_ids for r in engine.requests.values()):  # prefill
                    engine.step()
                yield batch, mode
                engine.abort(ids)
    finally:
        engine.runner.graphs = graphs
        if ahead is not None:
            engine.async_scheduling = ahead


def step_ms(engine: Engine, steps: int) -> float:
    """The median ms of `steps` engine steps back to back, as a serving loop runs them: a step's time
    is from the end of the previous step() call (on a GPU, step() returns while the step it
    launched still runs)."""
    times = []
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        engine.step()
        end = time.perf_counter()
        times.append((end - start) * 1e3)
        start = end
    return statistics.median(times)
