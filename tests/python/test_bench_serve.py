"""`kvserve bench serve` against a fake OpenAI streaming server: the protocol only (what is sent,
what is counted, what fails). Latency figures are not checked here: they are the metric tests' job."""

import asyncio
import json

import numpy as np
import pytest
from fake_openai_server import FakeOpenAIServer

from kvserve.bench import load_generator
from kvserve.bench.datasets import random_requests
from kvserve.bench.tokenizer import save_tokenizer
from kvserve.cli import main

VOCAB = 500


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tokenizer")
    (directory / "config.json").write_text(json.dumps({"vocab_size": VOCAB}))
    save_tokenizer(directory, VOCAB, model_max_length=1024)
    return directory


def bench_serve(server_url, tokenizer_dir, result_json, *flags):
    argv = ["bench", "serve", "--base-url", server_url, "--model", "fake", "--tokenizer", str(tokenizer_dir),
            "--result-json", str(result_json), "--disable-tqdm", *flags]
    assert main(argv) == 0
    return json.loads(result_json.read_text())


def test_counts_usage_and_payload(tokenizer_dir, tmp_path, capsys):
    with FakeOpenAIServer() as server:
        result = bench_serve(server.base_url, tokenizer_dir, tmp_path / "r.json",
                             "--num-prompts", "6", "--random-input-len", "9", "--random-output-len", "5")
    assert (result["completed"], result["failed"]) == (6, 0)
    assert (result["total_input_tokens"], result["total_output_tokens"]) == (54, 30)
    assert result["output_lens"] == [5] * 6 and result["prompt_format"] == "ids"
    assert all(len(gaps) == 4 for gaps in result["itls"])
    assert result["mean_ttft_ms"] > 0 and result["median_e2el_ms"] >= result["median_ttft_ms"]
    assert len(server.payloads) == 7  # the test request, then the benchmark
    expected = random_requests(6, 9, 5, 0.0, VOCAB, seed=0)
    assert [p["prompt"] for p in server.payloads[1:]] == [r.prompt_token_ids for r in expected]
    for payload in server.payloads:
        assert payload["stream"] and payload["stream_options"] == {"include_usage": True}
        assert payload["ignore_eos"] and payload["max_tokens"] == 5 and payload["temperature"] == 0.0
    table = capsys.readouterr().out
    assert "Successful requests:                     6" in table
    assert "Total generated tokens:                  30" in table


def test_failed_requests_are_counted_and_excluded(tokenizer_dir, tmp_path):
    args = {"num_prompts": 40, "input_len": 8, "output_len": 10, "range_ratio": 0.5, "vocab_size": VOCAB, "seed": 7}
    requests = random_requests(**args)
    ok = [r for r in requests if r.expected_output_len <= 10]
    assert requests[0].expected_output_len <= 10 and 0 < len(ok) < len(requests)  # the seed fits the test
    with FakeOpenAIServer(max_tokens_limit=10) as server:
        result = bench_serve(server.base_url, tokenizer_dir, tmp_path / "r.json", "--num-prompts", "40",
                             "--random-input-len", "8", "--random-output-len", "10",
                             "--random-range-ratio", "0.5", "--seed", "7")
    assert (result["completed"], result["failed"]) == (len(ok), len(requests) - len(ok))
    assert result["total_output_tokens"] == sum(r.expected_output_len for r in ok)
    assert result["total_input_tokens"] == sum(r.prompt_len for r in ok)
    failed = [e for e in result["errors"] if e]
    assert len(failed) == len(requests) - len(ok) and all(e.startswith("HTTP 400") for e in failed)


def test_text_prompts_when_server_refuses_token_ids(tokenizer_dir, tmp_path):
    with FakeOpenAIServer(accept_token_ids=False) as server:
        result = bench_serve(server.base_url, tokenizer_dir, tmp_path / "r.json", "--num-prompts", "3",
                             "--random-input-len", "4", "--random-output-len", "2")
    assert result["prompt_format"] == "text" and result["completed"] == 3
    assert all(isinstance(p["prompt"], str) for p in server.payloads[2:])


def test_max_concurrency_caps_requests_in_flight(tokenizer_dir, tmp_path):
    with FakeOpenAIServer() as server:
        result = bench_serve(server.base_url, tokenizer_dir, tmp_path / "r.json", "--num-prompts", "12",
                             "--random-input-len", "4", "--random-output-len", "8", "--max-concurrency", "2")
    assert result["completed"] == 12 and result["max_concurrency"] == 2
    assert server.max_in_flight == 2


def test_wrong_url_is_a_clear_error(tokenizer_dir, tmp_path):
    with FakeOpenAIServer() as server:
        url = server.base_url
    with pytest.raises(SystemExit, match=f"test request to {url}/v1/completions failed"):
        main(["bench", "serve", "--base-url", url, "--model", "fake", "--tokenizer", str(tokenizer_dir),
              "--num-prompts", "2", "--disable-tqdm"])
    with FakeOpenAIServer() as server, pytest.raises(SystemExit, match="HTTP 404"):
        main(["bench", "serve", "--base-url", server.base_url, "--endpoint", "/v1/nowhere", "--model", "fake",
              "--tokenizer", str(tokenizer_dir), "--num-prompts", "2", "--disable-tqdm"])


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--request-rate", "0"], "request rate 0.0"),
        (["--max-concurrency", "0"], "max concurrency 0"),
        (["--goodput", "ttft"], "bad goodput 'ttft'"),
        (["--metric-percentiles", "99,x"], "--metric-percentiles '99,x'"),
        (["--random-range-ratio", "1.5"], "range ratio 1.5"),
        (["--dataset", "no-such.jsonl"], "--dataset no-such.jsonl: no such file"),
    ],
)
def test_bad_flags_are_clear_errors(tokenizer_dir, flags, match):
    with FakeOpenAIServer() as server, pytest.raises(SystemExit, match=match):
        main(["bench", "serve", "--base-url", server.base_url, "--model", "fake", "--tokenizer", str(tokenizer_dir),
              "--num-prompts", "2", "--random-input-len", "4", "--random-output-len", "2", "--disable-tqdm", *flags])


def test_missing_vocab_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="pass --tokenizer DIR"):
        main(["bench", "serve", "--model", "served-name", "--num-prompts", "2", "--disable-tqdm"])


@pytest.mark.parametrize("burstiness", [1.0, 0.25])
def test_arrival_gaps_are_gamma_with_mean_one_over_rate(monkeypatch, burstiness):
    gaps = []

    async def record_sleep(seconds):
        gaps.append(seconds)

    monkeypatch.setattr(load_generator.asyncio, "sleep", record_sleep)

    async def drain():
        return [i async for i in load_generator._arrivals(4001, 4.0, burstiness, seed=0)]

    assert asyncio.run(drain()) == list(range(4001))
    gaps = np.array(gaps)
    assert len(gaps) == 4000
    assert gaps.mean() == pytest.approx(0.25, rel=0.1)
    assert gaps.std() / gaps.mean() == pytest.approx(1 / np.sqrt(burstiness), rel=0.1)  # gamma's CV
