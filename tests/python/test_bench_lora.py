"""bench/lora.py on the tiny preset: its PEFT-format adapters load, every run makes exactly its
tokens, and the table has a row per run (the speeds themselves are bench/README.md's business)."""

from bench_script import load_bench_script

bench = load_bench_script("lora")


def test_each_run_gets_a_row(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KVSERVE_CACHE_DIR", str(tmp_path))
    results = bench.main(["--preset", "tiny", "--rank", "4", "--num-prompts", "5", "--output-len", "6",
                          "--repeat", "2"])
    assert [name for name, _, _ in results] == ["base model", "one adapter", "four adapters"]
    assert all(best == max(rounds) > 0 and len(rounds) == 2 for _, best, rounds in results)
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| tiny, rank 4 |") and len(table) == 5
