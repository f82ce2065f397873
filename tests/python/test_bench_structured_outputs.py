"""bench/structured_outputs.py on the tiny model: every grammar's run makes exactly its tokens, and
the table has a row per grammar (the speeds themselves are bench/README.md's business)."""

from bench_script import load_bench_script

bench = load_bench_script("structured_outputs")


def test_each_grammar_gets_a_row(tiny_model_dir, capsys):
    results = bench.main(["--model", str(tiny_model_dir("LlamaForCausalLM")), "--num-prompts", "3",
                          "--output-len", "12", "--repeat", "2"])
    assert [name for name, _, _ in results] == list(bench.GRAMMARS)
    assert all(best == max(rounds) > 0 and len(rounds) == 2 for _, best, rounds in results)
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| grammar |") and len(table) == 2 + len(bench.GRAMMARS)
