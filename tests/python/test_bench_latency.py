"""`kvserve bench latency` on a tiny random model: which steps count as prefill and decode, the
statistics over them, the JSON result and clear errors for bad flags."""

import json

import numpy as np
import pytest

from kvserve.cli import main

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("LlamaForCausalLM")


def latency(model_dir, tmp_path, *flags) -> dict:
    result_json = tmp_path / "result.json"
    assert main(["bench", "latency", "--model", str(model_dir), "--disable-tqdm",
                 "--result-json", str(result_json), *flags]) == 0
    return json.loads(result_json.read_text())


def test_one_prefill_step_then_a_decode_step_per_further_token(model_dir, tmp_path, capsys):
    r = latency(model_dir, tmp_path, "--batch-size", "3", "--input-len", "5", "--output-len", "4",
                "--num-iters", "2", "--metric-percentiles", "50,99")
    assert (r["batch_size"], r["input_len"], r["output_len"], r["num_iters"]) == (3, 5, 4, 2)
    assert len(r["iterations"]) == 2
    for iteration in r["iterations"]:
        assert iteration["num_prefill_steps"] == 1 and len(iteration["step_ms"]) == 4
        assert len(iteration["ttft_ms"]) == len(iteration["e2el_ms"]) == 3
        assert sum(iteration["step_ms"]) <= max(iteration["e2el_ms"])
    decode_ms = [s for it in r["iterations"] for s in it["step_ms"][1:]]
    prefill_ms = [max(it["ttft_ms"]) for it in r["iterations"]]
    assert r["median_decode_step_ms"] == pytest.approx(np.median(decode_ms))
    assert r["p99_decode_step_ms"] == pytest.approx(np.percentile(decode_ms, 99))
    assert r["mean_prefill_ms"] == pytest.approx(np.mean(prefill_ms))
    assert r["p50_e2el_ms"] == pytest.approx(np.median([e for it in r["iterations"] for e in it["e2el_ms"]]))
    assert r["decode_tok_s"] == pytest.approx(3 * len(decode_ms) / (sum(decode_ms) / 1e3))
    assert "p90_decode_step_ms" not in r
    table = capsys.readouterr().out
    assert "Batch size:                              3" in table and "Median decode step (ms):" in table


def test_chunked_prefill_counts_steps_until_the_last_first_token(model_dir, tmp_path):
    # 8 tokens a step: step 1 = 5 of request 0 (its first token) + 3 of request 1; step 2 = request
    # 0's decode + request 1's last 2 + request 2's 5: every request has its first token after 2 steps.
    r = latency(model_dir, tmp_path, "--batch-size", "3", "--input-len", "5", "--output-len", "4",
                "--num-iters", "1", "--max-num-batched-tokens", "8")
    [iteration] = r["iterations"]
    assert iteration["num_prefill_steps"] == 2 and len(iteration["step_ms"]) == 5
    ttft = iteration["ttft_ms"]
    assert ttft[0] < ttft[1] == ttft[2]


@pytest.mark.parametrize("flags, message", [
    (["--output-len", "1"], "--output-len 1: expected >= 2"),
    (["--batch-size", "0"], "--batch-size 0: expected >= 1"),
    (["--num-iters", "0"], "--num-iters 0: expected >= 1"),
    (["--batch-size", "9", "--max-num-seqs", "8"], "--batch-size 9 exceeds --max-num-seqs 8"),
    (["--metric-percentiles", "50,101"], "--metric-percentiles '50,101'"),
    (["--input-len", "300"], "max_model_len"),
])
def test_bad_flags_exit_with_the_reason(model_dir, flags, message):
    with pytest.raises(SystemExit, match=f"^kvserve bench latency: .*{message}"):
        main(["bench", "latency", "--model", str(model_dir), "--disable-tqdm", "--num-iters-warmup", "0", *flags])


def test_output_json_is_vllms_name_for_result_json(model_dir, tmp_path):
    path = tmp_path / "out.json"
    assert main(["bench", "latency", "--model", str(model_dir), "--disable-tqdm", "--batch-size", "1",
                 "--input-len", "3", "--output-len", "2", "--num-iters", "1", "--num-iters-warmup", "0",
                 "--output-json", str(path)]) == 0
    assert json.loads(path.read_text())["batch_size"] == 1
