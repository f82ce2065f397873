"""bench/retract_rate.py on the tiny model: the counts add up, retracts happen with few first
candidates, and the tokens do not depend on how many candidates the sampler starts from."""

from kvserve import Engine
from bench_script import load_bench_script

retract_rate = load_bench_script("retract_rate")


def test_retracts_are_counted_and_the_candidates_change_no_token(tiny_model_dir):
    engine = Engine(str(tiny_model_dir("LlamaForCausalLM")), dtype="float32", kv_cache_memory_gb=0.01, device="cpu",
                    async_scheduling=True, max_num_seqs=32)
    scheduler, first = engine.scheduler, retract_rate.sampler_module.FIRST_CANDIDATES
    rows = retract_rate.measure(engine, [4, 64], max_tokens=6)
    assert engine.scheduler is scheduler and retract_rate.sampler_module.FIRST_CANDIDATES == first  # restored
    few, many = rows[:len(retract_rate.SETTINGS)], rows[len(retract_rate.SETTINGS):]
    for a, b in zip(few, many):
        assert a["tokens"] == b["tokens"]
    assert sum(r["retracted"] for r in few) > 0
    for r in rows:
        assert r["retracted"] <= r["changed"] <= r["short"] <= r["rows"]
