"""bench/runners/offline.py, the per-engine process of compare.py, on the Hugging Face engines
(the anchors are benchmarks, not tests, and are not needed here)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kvserve.bench.checkpoint import write_checkpoint
from kvserve.bench.datasets import offline_prompts
from kvserve.bench.presets import ModelPreset

pytest.importorskip("transformers")

RUNNER = Path(__file__).resolve().parents[2] / "bench" / "runners" / "offline.py"


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    root = tmp_path_factory.mktemp("runner")
    write_checkpoint(ModelPreset("micro", 64, 96, 2, 4, 2, vocab_size=1000, max_position_embeddings=64), root / "m")
    np.save(root / "prompts.npy", offline_prompts(3, 5) % 1000)
    return root


@pytest.mark.parametrize("engine", ["hf-sequential", "hf-batch"])
def test_runner_times_exactly_the_requested_tokens(micro, engine):
    result_path = micro / f"{engine}.json"
    subprocess.run([sys.executable, str(RUNNER), "--engine", engine, "--model", str(micro / "m"),
                    "--prompts", str(micro / "prompts.npy"), "--output-len", "4", "--dtype", "float32",
                    "--result", str(result_path)], check=True)
    result = json.loads(result_path.read_text())
    assert result["engine"] == engine and result["dtype"] == "float32"
    assert result["output_tok_s"] * result["wall_s"] == pytest.approx(3 * 4)
    assert result["total_tok_s"] * result["wall_s"] == pytest.approx(3 * (5 + 4))
