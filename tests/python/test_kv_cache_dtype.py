"""kv_cache_dtype (vLLM's) on the engine and the server: with an fp8 KV cache (or a bfloat16 one
for a float32 model), greedy ids equal transformers' over a cache that rounds each key and value the
same way (float32), through batching, chunked prefill and preemption; the same memory holds four
times the tokens of a float32 cache (twice, in bfloat16); the server answers as the offline engine
does and names the cache's dtype at /metrics; a bad name or a model dtype the cache does not narrow
is a clear error. (On a GPU: test_cuda_engine.)"""

from __future__ import annotations

import re

import httpx
import openai
import pytest
import torch

from kvserve import Engine, SamplingParams
from kvserve.kv_cache import KV_CACHE_DTYPES, kv_bytes_per_token, kv_cache_dtype_for
from kvserve.model_config import ModelConfig
from server_process import ServerProcess
from test_engine import GREEDY, PROMPTS, assert_no_blocks_held, make_engine
from test_models import hf_greedy


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("LlamaForCausalLM")


@pytest.mark.parametrize("kv_cache_dtype", ["fp8", "fp8_e5m2", "bfloat16"])
@pytest.mark.parametrize("mode", ["batched", "chunked-prefill", "preemption"])
def test_greedy_ids_equal_transformers_rounding_the_same(model_dir, kv_cache_dtype, mode):
    narrower = KV_CACHE_DTYPES[kv_cache_dtype]
    kwargs = {}
    if mode == "chunked-prefill":
        kwargs = dict(max_num_batched_tokens=5)
    elif mode == "preemption":
        # 11 usable blocks of 4 tokens: the longest request fits (max_model_len 40), all four do not.
        bytes_per_block = 4 * kv_bytes_per_token(ModelConfig.from_pretrained(model_dir), narrower)
        kwargs = dict(block_size=4, max_model_len=40, kv_cache_memory_gb=12 * bytes_per_block / 2**30)
    engine = make_engine(model_dir, kv_cache_dtype=kv_cache_dtype, **kwargs)
    outputs = engine.generate(PROMPTS, GREEDY, use_tqdm=False)
    expected, _ = hf_greedy(model_dir, [o.prompt_token_ids for o in outputs], GREEDY.max_tokens,
                            narrower_cache=narrower)
    assert [o.outputs[0].token_ids for o in outputs] == expected
    if mode == "preemption":
        assert engine.stats().num_preemptions > 0
    assert_no_blocks_held(engine)


def test_the_same_memory_holds_four_times_the_tokens_of_float32(model_dir):
    config = ModelConfig.from_pretrained(model_dir)
    assert kv_bytes_per_token(config, torch.float32) == 4 * kv_bytes_per_token(config, torch.float8_e4m3fn)
    plain, fp8 = make_engine(model_dir), make_engine(model_dir, kv_cache_dtype="fp8")
    assert plain.cache_dtype == torch.float32 and fp8.cache_dtype == torch.float8_e4m3fn
    block_size = fp8.scheduler.config.block_size
    assert fp8.stats().num_blocks == int(0.01 * 2**30 // (block_size * kv_bytes_per_token(config, fp8.cache_dtype)))
    assert fp8.stats().num_blocks >= 4 * plain.stats().num_blocks - 3
    assert fp8.runner.kv_caches[0][0].dtype == torch.float8_e4m3fn
    half = make_engine(model_dir, kv_cache_dtype="bfloat16")
    assert half.cache_dtype == torch.bfloat16 and half.stats().num_blocks >= 2 * plain.stats().num_blocks - 1


def test_bad_names_and_dtypes_are_clear_errors(model_dir):
    with pytest.raises(ValueError, match=r"kv_cache_dtype must be one of \['auto', 'bfloat16', 'fp8', 'fp8_e4m3', "
                                         r"'fp8_e5m2'\], got 'int8'"):
        make_engine(model_dir, kv_cache_dtype="int8")
    assert kv_cache_dtype_for("auto", torch.bfloat16) == torch.bfloat16
    assert kv_cache_dtype_for("bfloat16", torch.bfloat16) == torch.bfloat16
    assert kv_cache_dtype_for("fp8", torch.bfloat16) == torch.float8_e4m3fn
    with pytest.raises(ValueError, match=r"kv_cache_dtype 'bfloat16': a 16-bit cache narrows a float32 model's; "
                                         r"this model runs in float16"):
        Engine(str(model_dir), dtype="float16", kv_cache_memory_gb=0.01, device="cpu", kv_cache_dtype="bfloat16")


def test_the_server_answers_as_the_offline_engine(model_dir):
    offline = Engine(str(model_dir), dtype="float32", kv_cache_memory_gb=0.01, device="cpu", kv_cache_dtype="fp8")
    expected = offline.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True),
                                use_tqdm=False)
    with ServerProcess(model_dir, "--served-model-name", "tiny", "--dtype", "float32",
                       "--kv-cache-dtype", "fp8") as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
        for prompt, want in zip(PROMPTS, expected):
            got = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0,
                                            extra_body={"ignore_eos": True, "return_token_ids": True})
            assert got.choices[0].token_ids == want.outputs[0].token_ids
        [info] = [line for line in httpx.get(server.url + "/metrics").text.splitlines()
                  if line.startswith("kvserve:cache_config_info{")]
        assert 'cache_dtype="float8_e4m3fn"' in info
        assert re.search(r"KV cache \(float8_e4m3fn\): \d+ blocks of 16 tokens", "".join(server.log))
