"""bench/gguf_parts.py on a tiny GGUF file with projections of two kinds: both ways run every round
(the speeds are bench/README.md's business), and the loader is left as it was."""

import gguf

from bench_script import load_bench_script
from kvserve.loader import load as load_module

bench = load_bench_script("gguf_parts")


def test_both_ways_run_each_round(gguf_pair):
    _, path = gguf_pair("LlamaForCausalLM", gguf.GGMLQuantizationType.Q4_0, {"attn_v": gguf.GGMLQuantizationType.Q8_0})
    keep = load_module._keep_codes
    rates = bench.main(["--model", str(path), "--dtype", "float32", "--output-len", "4", "--rounds", "2"])
    assert len(rates) == 2 and all(min(pair) > 0 for pair in rates)
    assert load_module._keep_codes is keep
