"""bench/decoder_stack.py on the tiny preset: both ways run every round to exact lengths, and the
module's choice is left as it was (the speeds are bench/README.md's business)."""

import importlib.util
from pathlib import Path

import kvserve.models.llama as llama

_path = Path(__file__).resolve().parents[2] / "bench" / "decoder_stack.py"
_spec = importlib.util.spec_from_file_location("decoder_stack_bench", _path)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_both_ways_run_each_round(tmp_path, monkeypatch):
    monkeypatch.setenv("KVSERVE_CACHE_DIR", str(tmp_path))
    chosen = llama.DECODER_STACK_MAX_TOKENS
    rates = bench.main(["--preset", "tiny", "--batch", "6", "--input-len", "5", "--output-len", "4", "--rounds", "2"])
    assert list(rates) == ["layers past 4 tokens", "stack up to 6 tokens"]
    assert all(len(r) == 2 and min(r) > 0 for r in rates.values())
    assert llama.DECODER_STACK_MAX_TOKENS == chosen
