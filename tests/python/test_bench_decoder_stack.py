"""bench/decoder_stack.py on the tiny preset: both ways run every round to exact lengths, and the
module's choice is left as it was (the speeds are bench/README.md's business)."""


import kvserve.models.llama as llama
from bench_script import load_bench_script

bench = load_bench_script("decoder_stack")


def test_both_ways_run_each_round(tmp_path, monkeypatch):
    monkeypatch.setenv("KVSERVE_CACHE_DIR", str(tmp_path))
    chosen = llama.DECODER_STACK_MAX_TOKENS
    rates = bench.main(["--preset", "tiny", "--batch", "6", "--input-len", "5", "--output-len", "4", "--rounds", "2"])
    assert list(rates) == ["layers past 4 tokens", "stack up to 6 tokens"]
    assert all(len(r) == 2 and min(r) > 0 for r in rates.values())
    assert llama.DECODER_STACK_MAX_TOKENS == chosen
