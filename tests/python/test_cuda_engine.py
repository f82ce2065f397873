"""The engine on a GPU, end to end on the tiny models: greedy ids equal transformers' on the GPU
(float32), with the decode graphs and without, steps scheduled ahead or not, through batching, chunked prefill and preemption;
the KV cache sized by profiling; bfloat16 logits close to transformers' with the tensor-core
attention; graph replays equal to eager forwards of the same inputs; no KV block leaks. An fp8 KV
cache (kv_cache_dtype) throughout: against transformers whose cache rounds each key and value the
same way (test_models.RoundingCache)."""

from __future__ import annotations

import logging
import re

import pytest
import torch

from kvserve import Engine, SamplingParams
from kvserve.engine import RESAMPLED_SHARE_LIMIT
from kvserve.kv_cache import KV_CACHE_DTYPES, kv_bytes_per_token
from kvserve.loader import load_model
from kvserve.model_config import ModelConfig
from paged_greedy import paged_greedy
from requires_cuda import requires_cuda
from step_modes import count_retracts
from test_engine import GREEDY, PROMPTS, assert_no_blocks_held
from test_models import rounding_cache
from tiny_models import TINY_CONFIGS, tiny_hf_model

pytestmark = requires_cuda

ARCHITECTURES = sorted(TINY_CONFIGS)


@pytest.fixture(scope="module")
def hf_cuda_models():
    return {a: tiny_hf_model(a).cuda() for a in ARCHITECTURES}


def hf_greedy(hf_model, prompt_ids, max_new_tokens, narrower_cache=None):
    out = hf_model.generate(torch.tensor([prompt_ids], device="cuda"), max_new_tokens=max_new_tokens,
                            do_sample=False, eos_token_id=None, pad_token_id=0,
                            **rounding_cache(hf_model, narrower_cache))
    return out[0, len(prompt_ids):].tolist()


def gpu_engine(directory, **kwargs) -> Engine:
    return Engine(str(directory), dtype=kwargs.pop("dtype", "float32"), device="cuda",
                  kv_cache_memory_gb=kwargs.pop("kv_cache_memory_gb", 0.05), **kwargs)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("enforce_eager", [False, True], ids=["graphs", "eager"])
@pytest.mark.parametrize("async_scheduling", [True, False], ids=["ahead", "overlapped"])
def test_greedy_ids_equal_transformers(tiny_model_dir, hf_cuda_models, architecture, enforce_eager, async_scheduling):
    engine = gpu_engine(tiny_model_dir(architecture), enforce_eager=enforce_eager, async_scheduling=async_scheduling)
    assert (engine.runner.graphs is None) == enforce_eager
    for output in engine.generate(PROMPTS, GREEDY, use_tqdm=False):
        expected = hf_greedy(hf_cuda_models[architecture], output.prompt_token_ids, GREEDY.max_tokens)
        assert output.outputs[0].token_ids == expected, (architecture, output.prompt)
    assert_no_blocks_held(engine)


@pytest.mark.parametrize("kv_cache_dtype", ["fp8", "fp8_e5m2"])
@pytest.mark.parametrize("enforce_eager", [False, True], ids=["graphs", "eager"])
def test_fp8_kv_cache_greedy_ids_equal_transformers_rounding_the_same(tiny_model_dir, hf_cuda_models, kv_cache_dtype,
                                                                     enforce_eager):
    narrower = KV_CACHE_DTYPES[kv_cache_dtype]
    directory = tiny_model_dir("Qwen3ForCausalLM")  # its head norms too: the normed cache write
    engine = gpu_engine(directory, kv_cache_dtype=kv_cache_dtype, enforce_eager=enforce_eager)
    assert engine.runner.kv_caches[0][0].dtype == narrower
    for output in engine.generate(PROMPTS, GREEDY, use_tqdm=False):
        expected = hf_greedy(hf_cuda_models["Qwen3ForCausalLM"], output.prompt_token_ids, GREEDY.max_tokens, narrower)
        assert output.outputs[0].token_ids == expected, output.prompt
    assert_no_blocks_held(engine)


@pytest.mark.parametrize("mode", ["chunked-prefill", "preemption"])
def test_chunked_prefill_and_preemption_with_graphs(tiny_model_dir, hf_cuda_models, mode):
    directory = tiny_model_dir("LlamaForCausalLM")
    if mode == "chunked-prefill":
        kwargs = dict(max_num_batched_tokens=5)
    else:  # 11 usable blocks of 4 tokens: the longest request fits, all four do not
        per_block = 4 * kv_bytes_per_token(ModelConfig.from_pretrained(directory), torch.float32)
        kwargs = dict(block_size=4, max_model_len=40, kv_cache_memory_gb=12 * per_block / 2**30)
    engine = gpu_engine(directory, **kwargs)
    for output in engine.generate(PROMPTS, GREEDY, use_tqdm=False):
        assert output.outputs[0].token_ids == hf_greedy(hf_cuda_models["LlamaForCausalLM"], output.prompt_token_ids,
                                                        GREEDY.max_tokens)
    if mode == "preemption":
        assert engine.stats().num_preemptions > 0
    assert_no_blocks_held(engine)


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8"])
def test_kv_cache_is_sized_by_profiling(tiny_model_dir, caplog, kv_cache_dtype):
    with caplog.at_level(logging.INFO, logger="kvserve"):
        engine = Engine(str(tiny_model_dir("Qwen3ForCausalLM")), dtype="float32", device="cuda",
                        gpu_memory_utilization=0.2, max_num_seqs=16, kv_cache_dtype=kv_cache_dtype)
    [message] = [r.getMessage() for r in caplog.records if "KV cache of" in r.getMessage()]
    numbers = re.search(r"GPU memory: [\d.]+ GiB x [\d.]+ = ([\d.]+) GiB for ([\d.]+) GiB in use \(weights, CUDA\), "
                        r"([\d.]+) GiB of activations and a KV cache of (\d+) blocks, (\d+) tokens \(([\d.]+) GiB\)",
                        message).groups()
    budget, in_use, activations, cache = (float(numbers[i]) for i in (0, 1, 2, 5))
    blocks, tokens = int(numbers[3]), int(numbers[4])
    assert blocks > 0 and tokens == blocks * 16
    assert engine.stats().num_blocks == blocks + 1  # and the null block
    # What is left of the budget, in blocks of the cache's own elements (1 byte each in fp8).
    assert cache == pytest.approx(budget - in_use - activations, abs=0.2)
    per_token = kv_bytes_per_token(engine.model_config, engine.cache_dtype)
    assert cache == pytest.approx(blocks * 16 * per_token / 2**30, abs=0.05)
    assert engine.cache_dtype == (torch.float8_e4m3fn if kv_cache_dtype == "fp8" else torch.float32)
    [loaded] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded")]
    assert f"KV cache ({str(engine.cache_dtype).removeprefix('torch.')}): {blocks} blocks" in loaded
    assert len(engine.generate(PROMPTS, GREEDY, use_tqdm=False)) == len(PROMPTS)
    assert_no_blocks_held(engine)


@pytest.mark.parametrize("cache_dtype", [None, torch.float8_e4m3fn, torch.float8_e5m2], ids=str)
def test_bfloat16_logits_close_to_transformers(tiny_model_dir, cache_dtype):
    """head_dim 64 and bfloat16: the tensor-core attention kernel (over an fp8 cache: each stage
    widened in shared memory), against transformers on the GPU (its cache rounded the same way)."""
    directory = tiny_model_dir("LlamaForCausalLM", hidden_size=256, num_attention_heads=4, head_dim=64)
    model = load_model(directory, dtype="bfloat16", device="cuda").model
    prompts = [[5, 9, 100, 7], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [900 - 37 * i for i in range(17)]]
    _, logits = paged_greedy(model, prompts, 3, device="cuda", cache_dtype=cache_dtype)
    hf = tiny_hf_model("LlamaForCausalLM", hidden_size=256, num_attention_heads=4, head_dim=64)
    hf = hf.to(device="cuda", dtype=torch.bfloat16)
    for prompt, ours in zip(prompts, logits):
        with torch.no_grad():
            theirs = hf(torch.tensor([prompt], device="cuda"), **rounding_cache(hf, cache_dtype)).logits[0, -1]
        theirs = theirs.float().cpu()
        error = ((ours[0] - theirs).abs().max() / theirs.abs().max()).item()
        assert error < 3e-2, f"first-step logits differ by {error:.3f} of their largest magnitude"


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8"])
def test_graph_replays_equal_eager_forwards_of_their_inputs(tiny_model_dir, kv_cache_dtype):
    """bfloat16, head_dim 64 (tensor cores; the projection that writes the cache, into fp8 too):
    every decode step the engine replays is checked against an eager forward of the same padded
    inputs, while batches shrink from 8 requests to 1."""
    engine = gpu_engine(tiny_model_dir("LlamaForCausalLM", hidden_size=256, num_attention_heads=4, head_dim=64),
                        dtype="bfloat16", kv_cache_dtype=kv_cache_dtype)
    graphs, runner = engine.runner.graphs, engine.runner
    replay, checked = graphs.run, []

    def run_and_check(out, previous):
        hidden = replay(out, previous).clone()
        batch = next(size for size in graphs.sizes if size >= out.num_reqs)
        inputs = graphs.inputs
        eager = runner.model(inputs.view("input_ids", batch), inputs.view("positions", batch), runner.kv_caches,
                             inputs.metadata(batch))
        torch.testing.assert_close(hidden, eager[:out.num_reqs], rtol=1e-2, atol=1e-2)
        checked.append(out.num_reqs)
        return hidden

    graphs.run = run_and_check
    prompts = PROMPTS + [p + " and more" for p in PROMPTS]
    params = [SamplingParams(temperature=0, max_tokens=3 + 2 * i, ignore_eos=True) for i in range(len(prompts))]
    engine.generate(prompts, params, use_tqdm=False)
    assert 8 in checked and 3 in checked and 1 in checked  # graphs of 8, of 4 padded from 3, of 1
    assert_no_blocks_held(engine)


def test_graphs_captured_again_mid_run_change_no_tokens(tiny_model_dir, hf_cuda_models):
    """Capturing runs the model on the graphs' input buffer. Once 8 requests have shrunk to fewer,
    its rows past the step's graph hold the -1 of earlier steps' deferred tokens and the slots of
    live requests: a capture then must run on padding, or it reads out of range (or overwrites
    running requests' K/V)."""
    engine = gpu_engine(tiny_model_dir("LlamaForCausalLM"))
    graphs = engine.runner.graphs
    replay, batches = graphs.run, []

    def capture_when_fewer_than_8(out, previous):
        if batches and batches[-1] == 8 and out.num_reqs < 8:
            graphs.capture()
        batches.append(out.num_reqs)
        return replay(out, previous)

    graphs.run = capture_when_fewer_than_8
    prompts = PROMPTS + [p + " and more" for p in PROMPTS]
    params = [SamplingParams(temperature=0, max_tokens=3 + 2 * i, ignore_eos=True) for i in range(len(prompts))]
    for output, p in zip(engine.generate(prompts, params, use_tqdm=False), params):
        assert output.outputs[0].token_ids == hf_greedy(hf_cuda_models["LlamaForCausalLM"], output.prompt_token_ids,
                                                        p.max_tokens), output.prompt
    assert 8 in batches and min(batches) < 8
    assert_no_blocks_held(engine)


def test_prompt_logprobs_and_seeded_sampling_on_the_gpu(tiny_model_dir):
    directory = tiny_model_dir("Qwen3ForCausalLM")
    params = SamplingParams(temperature=0, max_tokens=2, logprobs=3, prompt_logprobs=2)
    [cpu] = Engine(str(directory), dtype="float32", device="cpu", kv_cache_memory_gb=0.01).generate(
        ["The capital of France is"], params, use_tqdm=False)
    engine = gpu_engine(directory)
    [gpu] = engine.generate(["The capital of France is"], params, use_tqdm=False)
    assert gpu.outputs[0].token_ids == cpu.outputs[0].token_ids
    for ours, theirs in zip(gpu.prompt_logprobs[1:], cpu.prompt_logprobs[1:]):
        for token_id, logprob in theirs.items():
            assert ours[token_id].logprob == pytest.approx(logprob.logprob, rel=1e-4, abs=1e-5)
    seeded = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, max_tokens=12, seed=7, ignore_eos=True)
    first, second = (engine.generate(["Hi"], seeded, use_tqdm=False)[0].outputs[0].token_ids for _ in range(2))
    assert first == second and len(first) == 12


def test_seeded_top_p_scheduled_ahead_gives_the_tokens_of_steps_scheduled_after(tiny_model_dir):
    """A vocabulary of 4096 and flat distributions: top-p's kept set is larger than the GPU's 1024
    first candidates, so rows settle late; scheduled ahead, the engine retracts the rows that
    decoded them, then (past its share limit) has steps settle first. The seeded tokens are those of
    the engine without async scheduling (one request: the same rows in every step)."""
    directory = tiny_model_dir("LlamaForCausalLM", vocab_size=4096)
    params = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=24, seed=11, ignore_eos=True)
    ahead, not_ahead = (gpu_engine(directory, async_scheduling=a) for a in (True, False))
    retracted = count_retracts(ahead)
    [expected] = not_ahead.generate(["Hi"], params, use_tqdm=False)
    [got] = ahead.generate(["Hi"], params, use_tqdm=False)
    assert got.outputs[0].token_ids == expected.outputs[0].token_ids
    assert retracted and ahead._resampled_share > RESAMPLED_SHARE_LIMIT
    assert_no_blocks_held(ahead)
    assert_no_blocks_held(not_ahead)


PDL_RUN = """
import hashlib, sys
from kvserve import Engine, SamplingParams
engine = Engine(sys.argv[1], dtype="bfloat16", device="cuda", kv_cache_memory_gb=0.05, max_num_seqs=8)
prompts = [{"prompt_token_ids": [3 + (i * 7 + j) % 200 for j in range(5 + 9 * i)]} for i in range(6)]
params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=3)
outputs = engine.generate(prompts, params, use_tqdm=False)
digest = hashlib.sha256(repr([(o.outputs[0].token_ids, o.outputs[0].logprobs) for o in outputs]).encode())
print(digest.hexdigest())
"""


def test_programmatic_launches_change_no_bits(tiny_model_dir):
    """On sm_90 kvserve's kernels start while the one before ends and work before they wait for it
    (compat.cuh): a kernel that read what the one before still writes would change some bits. The
    same bfloat16 run (tensor-core kernels, graphs, batches that shrink) in two processes, launched
    programmatically and plain: the same tokens and logprobs to the last bit."""
    import os
    import subprocess
    import sys

    directory = str(tiny_model_dir("LlamaForCausalLM", hidden_size=256, num_attention_heads=4, head_dim=64))
    digests = []
    for pdl in ("1", "0"):
        env = dict(os.environ, KVSERVE_PDL=pdl)
        run = subprocess.run([sys.executable, "-c", PDL_RUN, directory], capture_output=True, text=True, env=env,
                             timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        digests.append(run.stdout.split()[-1])
    assert digests[0] == digests[1]


def test_a_steps_results_do_not_wait_for_work_queued_after_it(tiny_model_dir):
    """On one stream a plain read waits for everything queued before it. Scheduled ahead, the next
    step's forward pass is queued before the host reads this step's tokens: they are copied to the
    host as soon as the sampler is queued, so reading them waits for this step's work only."""
    engine = gpu_engine(tiny_model_dir("LlamaForCausalLM"))
    engine.add_request("a", "Hi", SamplingParams(temperature=0.8, top_p=0.9, seed=1, logprobs=2, max_tokens=4,
                                                 ignore_eos=True))
    engine.step()  # the prefill launched and its sampler queued
    launched = engine._launched
    x = torch.randn(4096, 4096, device="cuda")
    for _ in range(40):  # tens of milliseconds of work queued after the step
        x = torch.tanh(x @ x)
    queued_after = torch.cuda.Event()
    queued_after.record()
    result = launched.result()
    assert not queued_after.query(), "reading the step's results waited for the work queued after it"
    assert result.sampled_token_ids.shape == (1,) and result.logprobs.token_ids.shape == (1, 3)
    while engine.has_unfinished_requests():
        engine.step()
    assert_no_blocks_held(engine)


def test_embeddings_on_the_gpu_equal_the_cpus(tiny_model_dir):
    """A pooling engine on the GPU (profiled without an LM head, no graphs, its steps synchronous)
    pools what the CPU's does: each prompt's vector, and every token's (token_embed, whose rows
    gather on the device)."""
    directory = str(tiny_model_dir("LlamaForCausalLM"))
    prompts = PROMPTS
    vectors, rows = {}, {}
    for device in ("cuda", "cpu"):
        engine = Engine(directory, runner="pooling", device=device, dtype="float32", kv_cache_memory_gb=0.05,
                        max_num_batched_tokens=8, block_size=4)
        assert not engine.async_scheduling
        vectors[device] = torch.tensor([o.outputs.embedding for o in engine.embed(prompts, use_tqdm=False)])
        rows[device] = [o.outputs.data for o in engine.encode(prompts, pooling_task="token_embed", use_tqdm=False)]
    torch.testing.assert_close(vectors["cuda"], vectors["cpu"], atol=1e-4, rtol=0)
    for on_gpu, on_cpu in zip(rows["cuda"], rows["cpu"]):
        assert on_gpu.device.type == "cpu"  # handed back on the host, as embeddings are
        torch.testing.assert_close(on_gpu, on_cpu, atol=1e-4, rtol=0)
    gpu = Engine(directory, runner="pooling", device="cuda", dtype="float32", gpu_memory_utilization=0.3)
    assert gpu.embed(prompts[:1], use_tqdm=False)[0].outputs.hidden_size == 64
