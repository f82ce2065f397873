"""bench/act_order.py on a tiny model: both ways run every round (the speeds are bench/README.md's
business)."""

from bench_script import load_bench_script

bench = load_bench_script("act_order")


def test_both_ways_run_each_round(tiny_model_dir):
    rates = bench.main(["--model", str(tiny_model_dir("LlamaForCausalLM")), "--dtype", "float32", "--output-len", "4",
                        "--rounds", "2"])
    assert len(rates) == 2 and all(min(pair) > 0 for pair in rates)
