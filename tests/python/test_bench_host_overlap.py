"""bench/host_overlap.py's stand-in device: a step takes its time from its start, steps run in order,
and every way the engine steps runs on it and leaves nothing held (its numbers are the benchmark's to give)."""

import time

import pytest

from kvserve import Engine
from bench_script import load_bench_script

host_overlap = load_bench_script("host_overlap")


class Out:
    num_sampled = 3


def test_steps_take_their_time_in_order():
    device = host_overlap.StandInDevice(20.0, vocab_size=100)
    start = time.perf_counter()
    first, second = device.launch(Out(), {}), device.launch(Out(), {})
    assert second.ready_at - first.ready_at == pytest.approx(0.020) and first.ready_at - start >= 0.020
    tokens = second.result().sampled_token_ids
    assert time.perf_counter() >= start + 0.040 and tokens.shape == (3,) and (tokens >= 10).all()


def test_every_engine_step_runs_on_it_and_holds_nothing_after(tiny_model_dir):
    engine = Engine(str(tiny_model_dir("LlamaForCausalLM")), dtype="float32", kv_cache_memory_gb=0.01, device="cpu")
    for mode in host_overlap.MODES:
        assert host_overlap.ms_per_step(engine, batch=3, steps=6, device_ms=2.0, mode=mode) >= 1.8
        stats = engine.stats()
        assert not engine.requests and stats.num_free_blocks == stats.num_blocks - 1
