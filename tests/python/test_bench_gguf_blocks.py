"""bench/gguf_blocks.py on a tiny GGUF file: both ways run every round (the speeds are bench/README.md's
business), the block lists are left as they were, and a type not read as codes is refused."""

import gguf
import pytest

from bench_script import load_bench_script
from kvserve.loader import gguf_weights

bench = load_bench_script("gguf_blocks")


def test_both_ways_run_each_round(gguf_pair):
    _, path = gguf_pair("LlamaForCausalLM", gguf.GGMLQuantizationType.Q4_0, {"attn_v": gguf.GGMLQuantizationType.Q8_0})
    lists = (gguf_weights.INT8_TYPES, gguf_weights.UINT4_TYPES)
    rates = bench.main(["--model", str(path), "--block", "Q8_0", "--dtype", "float32", "--output-len", "4",
                        "--rounds", "2"])
    assert len(rates) == 2 and all(min(pair) > 0 for pair in rates)
    assert (gguf_weights.INT8_TYPES, gguf_weights.UINT4_TYPES) == lists


def test_a_block_type_not_read_as_codes_is_refused(gguf_pair):
    _, path = gguf_pair("LlamaForCausalLM", gguf.GGMLQuantizationType.Q4_0)
    with pytest.raises(SystemExit):
        bench.main(["--model", str(path), "--block", "Q5_K"])
