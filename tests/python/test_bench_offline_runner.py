"""How compare.py measures offline engines: bench/runners/offline.py on the Hugging Face engines,
and kvserve through `kvserve bench throughput` (the anchors are benchmarks, not tests, and are not
needed here)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kvserve.bench.checkpoint import write_checkpoint
from kvserve.bench.datasets import offline_prompts, warmup_prompt
from kvserve.bench.presets import ModelPreset, parse_case

pytest.importorskip("transformers")

RUNNER = Path(__file__).resolve().parents[2] / "bench" / "runners" / "offline.py"


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    root = tmp_path_factory.mktemp("runner")
    write_checkpoint(ModelPreset("micro", 64, 96, 2, 4, 2, vocab_size=1000, max_position_embeddings=64), root / "m")
    np.savez(root / "prompts.npz", prompts=offline_prompts(3, 5, vocab_size=1000), warmup=warmup_prompt(5, 1000))
    return root


@pytest.mark.parametrize("engine", ["hf-sequential", "hf-batch"])
def test_runner_times_exactly_the_requested_tokens(micro, engine):
    result_path = micro / f"{engine}.json"
    subprocess.run([sys.executable, str(RUNNER), "--engine", engine, "--model", str(micro / "m"),
                    "--prompts", str(micro / "prompts.npz"), "--output-len", "4", "--dtype", "float32",
                    "--result", str(result_path)], check=True)
    result = json.loads(result_path.read_text())
    assert result["engine"] == engine and result["dtype"] == "float32"
    assert result["output_tok_s"] * result["wall_s"] == pytest.approx(3 * 4)
    assert result["total_tok_s"] * result["wall_s"] == pytest.approx(3 * (5 + 4))


def test_compare_measures_kvserve_through_bench_throughput(micro, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(RUNNER.parents[1]))
    from engines import Settings, run_offline

    run = run_offline("kvserve", parse_case("offline-3-5-4"), "micro", micro / "m", "float32",
                      micro / "prompts.npz", Settings(threads=2, vllm_bind="0-1", vllm_memory_utilization=0.25,
                                                      log_dir=tmp_path))
    assert run.engine == "kvserve" and run.result, run.note
    assert (run.result["num_requests"], run.result["total_output_tokens"]) == (3, 12)
    assert run.output_tok_s * run.result["wall_s"] == pytest.approx(12)
    assert run.result["engine_args"]["skip_tokenizer_init"] and run.result["dtype"] == "float32"
    assert run.peak_rss_bytes > 100e6 and run.startup_s > 0
