"""bench/embeddings.py on the tiny model: both engines embed every prompt, their vectors agree, and
the table has a row per engine (the speeds themselves are bench/README.md's business)."""

import re
from bench_script import load_bench_script

bench = load_bench_script("embeddings")


def test_both_engines_get_a_row_and_their_vectors_agree(tiny_model_dir, capsys):
    results = bench.main(["--model", str(tiny_model_dir("LlamaForCausalLM")), "--num-prompts", "3",
                          "--input-len", "9", "--repeat", "2", "--dtype", "float32"])
    assert [name for name, _, _ in results] == ["kvserve", "transformers"]
    assert all(best == max(rounds) > 0 and len(rounds) == 2 for _, best, rounds in results)
    out = capsys.readouterr().out.splitlines()
    assert float(re.search(r"vectors: (\S+)", out[0]).group(1)) < 1e-5
    assert out[2].startswith("| engine | prompt tok/s |")
