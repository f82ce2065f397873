"""AsyncEngine in-process (no HTTP): its streams carry what the offline Engine generates; closing
one aborts it; a failing step or a rejected request reaches only its streams and the engine goes
on; a full waiting room and a shutdown are clear errors. No KV block is ever left held. Each test
runs on each way the engine steps (step_modes.py)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from kvserve import Engine, SamplingParams
from kvserve.sampling_params import RequestOutputKind
from kvserve.server.async_engine import AsyncEngine, EnginePrompt, EngineStoppedError, QueueFullError
from step_modes import STEP_MODES, set_step_mode

DELTA = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, output_kind=RequestOutputKind.DELTA)


@pytest.fixture(params=STEP_MODES)
def engine(tiny_model_dir, request):
    """The CPU engine, stepping plainly or as on a GPU, where a step's outputs come while the next
    one runs (step_modes.py)."""
    engine = Engine(str(tiny_model_dir("LlamaForCausalLM")), dtype="float32", kv_cache_memory_gb=0.01)
    return set_step_mode(engine, request.param)


@pytest.fixture(params=STEP_MODES)
def engine_of_eight(tiny_model_dir, request):
    """The same, running at most eight sequences at a time."""
    engine = Engine(str(tiny_model_dir("LlamaForCausalLM")), dtype="float32", kv_cache_memory_gb=0.01,
                    max_num_seqs=8)
    return set_step_mode(engine, request.param)


@pytest.fixture(params=STEP_MODES)
def engine_of_one(tiny_model_dir, request):
    """The same, running one sequence at a time."""
    engine = Engine(str(tiny_model_dir("LlamaForCausalLM")), dtype="float32", kv_cache_memory_gb=0.01,
                    max_num_seqs=1)
    return set_step_mode(engine, request.param)


def assert_no_blocks_held(engine: Engine) -> None:
    stats = engine.stats()
    assert not engine.requests and stats.num_free_blocks == stats.num_blocks - 1


def run(engine: Engine, scenario, max_waiting: int = 16):
    """Run `scenario(async_engine)` on a fresh event loop, with the engine thread started and joined."""
    async def main():
        async_engine = AsyncEngine(engine, max_waiting=max_waiting)
        async_engine.start()
        try:
            return await asyncio.wait_for(scenario(async_engine), 120)  # a hang fails instead
        finally:
            await async_engine.shutdown()

    return asyncio.run(main())


async def collect(stream) -> dict[int, list[int]]:
    token_ids: dict[int, list[int]] = {}
    try:
        async for prompt_index, output in stream:
            token_ids.setdefault(prompt_index, []).extend(output.outputs[0].token_ids)
    finally:
        stream.close()
    return token_ids


def prompts(engine: Engine, *texts: str) -> list[EnginePrompt]:
    return [EnginePrompt(engine.tokenizer.encode(text), text) for text in texts]


def test_streams_carry_the_offline_engines_tokens(engine):
    expected = [o.outputs[0].token_ids for o in engine.generate(["Hi", "Hello there"], DELTA, use_tqdm=False)]

    async def scenario(async_engine):
        return await asyncio.gather(collect(async_engine.submit("a", prompts(engine, "Hi", "Hello there"), DELTA)),
                                    collect(async_engine.submit("b", prompts(engine, "Hello there"), DELTA)))

    both, alone = run(engine, scenario)
    assert [both[0], both[1], alone[0]] == [expected[0], expected[1], expected[1]]
    assert_no_blocks_held(engine)


def test_closing_a_stream_aborts_its_request(engine):
    long = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True, output_kind=RequestOutputKind.DELTA)

    async def scenario(async_engine):
        stream = async_engine.submit("a", prompts(engine, "Hi"), long)
        async for _ in stream:
            break
        stream.close()
        while async_engine.snapshot.num_running:
            await asyncio.sleep(0.01)
        return async_engine.snapshot

    snapshot = run(engine, scenario)
    assert snapshot.kv_cache_usage == 0.0
    assert_no_blocks_held(engine)


def test_a_failed_step_fails_its_streams_and_the_engine_goes_on(engine, monkeypatch):
    launch = engine.runner.launch
    calls = []

    def fail_once(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return launch(*args)

    monkeypatch.setattr(engine.runner, "launch", fail_once)

    async def scenario(async_engine):
        with pytest.raises(RuntimeError, match="engine step failed: boom"):
            await collect(async_engine.submit("a", prompts(engine, "Hi"), DELTA))
        return await collect(async_engine.submit("b", prompts(engine, "Hi"), DELTA))

    assert len(run(engine, scenario)[0]) == DELTA.max_tokens
    assert_no_blocks_held(engine)


def test_a_failed_step_fails_the_stream_of_a_request_run_as_several(engine_of_one, monkeypatch):
    """n above max_num_seqs: the engine runs the samples as child requests; their step's failure
    fails the request's stream (whose id is the request's, not a child's) rather than leave it hanging."""
    launch = engine_of_one.runner.launch

    def fail_third(*args, calls=[]):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return launch(*args)

    monkeypatch.setattr(engine_of_one.runner, "launch", fail_third)
    fanned = dataclasses.replace(DELTA, n=3, temperature=1.0, seed=0)

    async def scenario(async_engine):
        with pytest.raises(RuntimeError, match="engine step failed: boom"):
            await collect(async_engine.submit("a", prompts(engine_of_one, "Hi"), fanned))

    run(engine_of_one, scenario)
    assert_no_blocks_held(engine_of_one)
    assert not engine_of_one.request_ids()


def test_a_request_the_engine_rejects_fails_only_its_stream(engine):
    async def scenario(async_engine):
        with pytest.raises(ValueError, match="vocabulary"):
            await collect(async_engine.submit("bad", [EnginePrompt([1, 10**6])], DELTA))
        return await collect(async_engine.submit("good", prompts(engine, "Hi"), DELTA))

    assert len(run(engine, scenario)[0]) == DELTA.max_tokens


def test_any_error_adding_a_request_fails_only_its_stream(engine, monkeypatch):
    """Not only a ValueError: whatever add_request raises (it leaves nothing behind) fails that
    request, and the engine thread goes on."""
    add_request = engine.add_request

    def unreadable(request_id, *args, **kwargs):
        if request_id.startswith("bad"):
            raise OSError("the adapter's disk is gone")
        return add_request(request_id, *args, **kwargs)

    monkeypatch.setattr(engine, "add_request", unreadable)

    async def scenario(async_engine):
        with pytest.raises(OSError, match="disk is gone"):
            await collect(async_engine.submit("bad", prompts(engine, "Hi"), DELTA))
        return await collect(async_engine.submit("good", prompts(engine, "Hi"), DELTA))

    assert len(run(engine, scenario)[0]) == DELTA.max_tokens


def test_a_full_waiting_room_and_a_shutdown_are_clear_errors(engine_of_one):
    """max_waiting counts the requests that will wait: those past the batch's free places (one
    here), whether or not the engine thread has taken them yet."""
    engine = engine_of_one

    async def scenario(async_engine):
        with pytest.raises(QueueFullError, match="limit is 2"):
            async_engine.submit("a", prompts(engine, "a", "b", "c", "d"), DELTA)
        stream = async_engine.submit("b", prompts(engine, "a", "b", "c"), DELTA)
        with pytest.raises(QueueFullError, match="2 requests are already waiting"):
            async_engine.submit("d", prompts(engine, "a"), DELTA)
        await async_engine.shutdown()
        with pytest.raises(EngineStoppedError):
            await collect(stream)
        with pytest.raises(EngineStoppedError):
            async_engine.submit("c", prompts(engine, "a"), DELTA)
        return async_engine.is_running

    assert run(engine, scenario, max_waiting=2) is False
    assert_no_blocks_held(engine)


def test_the_waiting_room_counts_each_request_by_its_samples(engine_of_eight):
    """A request of n samples takes n of the batch's places: two of n = 4 fill eight, so a third
    waits (as 4 sequences, more than the room of 2)."""
    engine = engine_of_eight
    four = dataclasses.replace(DELTA, n=4, temperature=1.0, seed=1)

    async def scenario(async_engine):
        streams = [async_engine.submit(name, prompts(engine, "a"), four) for name in ("a", "b")]
        with pytest.raises(QueueFullError, match="limit is 2"):
            async_engine.submit("c", prompts(engine, "a"), four)
        for stream in streams:
            await collect(stream)

    run(engine, scenario, max_waiting=2)
    assert_no_blocks_held(engine)
