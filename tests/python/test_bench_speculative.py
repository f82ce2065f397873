"""bench/speculative.py on the tiny Llama whose text repeats: a row per workload and batch size, the
two engines' answers equal (the script checks), and drafts proposed (the speeds themselves are
bench/README.md's business)."""

from bench_script import load_bench_script

bench = load_bench_script("speculative")


def test_every_workload_gets_a_row_with_drafts(repeating_model_dir, capsys):
    rows = bench.main(["--model", str(repeating_model_dir), "--dtype", "float32", "--batch", "1", "8",
                       "--max-tokens", "24", "--repeat", "1", "--prompt-lookup-min", "1"])
    assert [(name, batch) for name, batch, *_ in rows] == [(w, b) for w in bench.WORKLOADS for b in (1, 8)]
    assert all(plain > 0 and spec > 0 and accepted <= drafted for _, _, plain, spec, accepted, drafted, _ in rows)
    assert sum(drafted for *_, drafted, _ in rows) > 0
    assert "| workload | batch |" in capsys.readouterr().out
