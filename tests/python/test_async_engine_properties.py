"""AsyncEngine under random traffic: streams of one or several prompts submitted at random moments,
some closed early by their client, model runs that fail at random, on each way the engine steps
(step_modes.py). Every stream ends: with all its outputs (each prompt's tokens those of a lone run of
it), closed by its client, or with the failed step's error; no KV block is held at the end."""

from __future__ import annotations

import asyncio
import random

import pytest

from failing_launches import failing_launches
from kvserve import Engine, SamplingParams
from kvserve.sampling_params import RequestOutputKind
from kvserve.server.async_engine import AsyncEngine, EnginePrompt
from step_modes import STEP_MODES, set_step_mode


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("LlamaForCausalLM")


async def consume(stream, num_prompts: int, close_after: int | None):
    """("done", tokens per prompt) | ("closed", None) | ("failed", message)."""
    tokens = [[] for _ in range(num_prompts)]
    seen = 0
    try:
        async for prompt_index, output in stream:
            tokens[prompt_index] += output.outputs[0].token_ids
            seen += 1
            if close_after is not None and seen >= close_after:
                return "closed", None
    except RuntimeError as error:
        return "failed", str(error)
    finally:
        stream.close()
    return "done", tokens


@pytest.mark.parametrize("mode", STEP_MODES)
@pytest.mark.parametrize("seed", range(6))
def test_every_stream_ends_with_its_outputs_or_an_error_and_nothing_leaks(model_dir, seed, mode):
    rng = random.Random(seed)
    # 24 to 100 blocks of 4 tokens: preemptions when the cache is short (a float32 token: 512 bytes).
    engine = Engine(str(model_dir), dtype="float32", kv_cache_memory_gb=rng.choice([24, 100]) * 4 * 512 / 2**30,
                    device="cpu", block_size=4, max_model_len=64, max_num_seqs=rng.choice([2, 4, 8]),
                    max_num_batched_tokens=rng.choice([16, 64]))
    set_step_mode(engine, mode)
    launch = engine.runner.launch
    engine.runner.launch = failing_launches(launch, seed + 100, before=0.02, after=0.01)
    submitted = []

    async def scenario(async_engine):
        tasks = []
        for i in range(24):
            prompts = [[rng.randint(3, 200) for _ in range(rng.randint(1, 30))] for _ in range(rng.choice([1, 1, 2]))]
            params = SamplingParams(temperature=0, max_tokens=rng.randint(1, 24), ignore_eos=True,
                                    output_kind=RequestOutputKind.DELTA)
            stream = async_engine.submit(f"s{i}", [EnginePrompt(p) for p in prompts], params)
            submitted.append((prompts, params))
            close_after = rng.choice([None, None, None, rng.randint(1, 4)])
            tasks.append(asyncio.create_task(consume(stream, len(prompts), close_after)))
            await asyncio.sleep(rng.uniform(0, 0.005))
        return await asyncio.gather(*tasks)

    async def main():
        async_engine = AsyncEngine(engine, max_waiting=64)
        async_engine.start()
        try:
            return await asyncio.wait_for(scenario(async_engine), 120)
        finally:
            await async_engine.shutdown()

    results = asyncio.run(main())
    stats = engine.stats()
    assert not engine.requests and stats.num_free_blocks == stats.num_blocks - 1, stats
    engine.runner.launch = launch
    lone = Engine(str(model_dir), dtype="float32", kv_cache_memory_gb=0.01, device="cpu", enable_prefix_caching=False)
    kinds = [kind for kind, _ in results]
    assert "done" in kinds and ("failed" in kinds or "closed" in kinds), kinds
    for (kind, tokens), (prompts, params) in zip(results, submitted):
        if kind == "failed":
            assert "engine step failed" in tokens
        elif kind == "done":
            alone = lone.generate([{"prompt_token_ids": p} for p in prompts],
                                  SamplingParams(temperature=0, max_tokens=params.max_tokens, ignore_eos=True),
                                  use_tqdm=False)
            assert tokens == [o.outputs[0].token_ids for o in alone]
