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
from kvserve.tokenizer import Tokenizer

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
    # vLLM's default --percentile-metrics ttft,tpot,itl: no E2EL section printed (the JSON keeps it).
    assert "P99 ITL (ms):" in table and "E2EL" not in table and "p99_e2el_ms" in result


def test_a_random_prefix_reaches_the_server_and_the_result(tokenizer_dir, tmp_path):
    with FakeOpenAIServer() as server:
        result = bench_serve(server.base_url, tokenizer_dir, tmp_path / "r.json", "--num-prompts", "3",
                             "--random-input-len", "6", "--random-output-len", "2", "--random-prefix-len", "20")
    expected = random_requests(3, 6, 2, 0.0, VOCAB, seed=0, prefix_len=20)
    assert [p["prompt"] for p in server.payloads[1:]] == [r.prompt_token_ids for r in expected]
    assert result["random_prefix_len"] == 20 and result["total_input_tokens"] == 3 * 26


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
    tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
    assert result["input_lens"] == [len(tokenizer.encode(p["prompt"])) for p in server.payloads[2:]]


@pytest.mark.parametrize("flags", [["--prompt-format", "text"], ["--dataset-name", "random", "--prompt-format", "text"]])
def test_text_prompts_are_counted_as_the_server_tokenizes_them(tokenizer_dir, tmp_path, flags):
    """Random ids decode to text that re-tokenizes to other lengths (here 37-51 tokens for 32 ids):
    the text is re-encoded and adjusted to the asked length, and what is counted is its length as
    the server encodes it."""
    reference = random_requests(8, 32, 2, 0.0, VOCAB, seed=0)
    tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
    assert all(len(tokenizer.encode(tokenizer.decode(r.prompt_token_ids))) != 32 for r in reference)  # the trap
    with FakeOpenAIServer() as server:
        result = bench_serve(server.base_url, tokenizer_dir, tmp_path / "r.json", "--num-prompts", "8",
                             "--random-input-len", "32", "--random-output-len", "2", *flags)
    sent = [len(tokenizer.encode(p["prompt"])) for p in server.payloads[1:]]
    assert result["prompt_format"] == "text" and result["input_lens"] == sent
    assert result["total_input_tokens"] == sum(sent)
    assert sent.count(32) >= 6 and all(abs(n - 32) <= 2 for n in sent)  # the rounds reach the length, or near it


def test_vllm_flag_names(tokenizer_dir, tmp_path, capsys):
    """vllm bench serve's spellings: --host/--port, --backend, --dataset-name, --save-result with
    --result-dir/--result-filename, --percentile-metrics."""
    with FakeOpenAIServer() as server:
        port = server.base_url.rsplit(":", 1)[1]
        assert main(["bench", "serve", "--host", "127.0.0.1", "--port", port, "--backend", "vllm", "--model", "fake",
                     "--tokenizer", str(tokenizer_dir), "--dataset-name", "random", "--num-prompts", "3",
                     "--random-input-len", "4", "--random-output-len", "3", "--save-result",
                     "--result-dir", str(tmp_path / "out"), "--result-filename", "r.json",
                     "--percentile-metrics", "e2el,ttft", "--metric-percentiles", "50", "--disable-tqdm"]) == 0
    result = json.loads((tmp_path / "out" / "r.json").read_text())
    assert (result["completed"], result["base_url"], result["backend"]) == (3, server.base_url, "vllm")
    assert (result["dataset"], result["random_input_len"], result["tokenizer_id"]) == ("random", 4, str(tokenizer_dir))
    table = capsys.readouterr().out
    assert "P50 TTFT (ms):" in table and "P50 E2EL (ms):" in table
    assert "TPOT" not in table and "ITL" not in table and "P99" not in table


def test_save_result_names_the_file_as_vllm_does(tokenizer_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with FakeOpenAIServer() as server:
        assert main(["bench", "serve", "--base-url", server.base_url, "--model", "org/fake", "--tokenizer",
                     str(tokenizer_dir), "--num-prompts", "2", "--random-input-len", "4", "--random-output-len", "2",
                     "--max-concurrency", "2", "--save-result", "--disable-tqdm"]) == 0
    [path] = list(tmp_path.iterdir())
    assert path.name.startswith("openai-infqps-concurrency2-fake-") and path.suffix == ".json"
    assert json.loads(path.read_text())["completed"] == 2


def test_sharegpt_result_records_no_random_lengths(tokenizer_dir, tmp_path):
    chats = [[{"from": "human", "value": f"tell me story number {i} about the sea"},
              {"from": "gpt", "value": f"once upon a time there were {i} ships at sea"}] for i in range(5)]
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(json.dumps({"conversations": c}) for c in chats))
    with FakeOpenAIServer() as server:
        result = bench_serve(server.base_url, tokenizer_dir, tmp_path / "r.json", "--dataset-name", "sharegpt",
                             "--dataset-path", str(path), "--num-prompts", "3")
    assert (result["completed"], result["dataset"], result["backend"]) == (3, str(path), "openai")
    assert result["tokenizer_id"] == str(tokenizer_dir)
    assert not [key for key in result if key.startswith("random_")]


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
        (["--dataset-name", "sharegpt", "--dataset-path", "no-such.jsonl"], "--dataset no-such.jsonl: no such file"),
        (["--dataset-name", "sharegpt"], "--dataset-name sharegpt needs --dataset-path FILE"),
        (["--dataset-path", "chats.jsonl"], "--dataset-path chats.jsonl: the random dataset reads no file"),
        (["--dataset", "random", "--dataset-name", "random"], "--dataset random with --dataset-name"),
        (["--port", "8000"], "with --host/--port: give one or the other"),
        (["--backend", "openai-chat", "--endpoint", "/v1/completions"], "must end with chat/completions"),
        (["--backend", "openai-chat", "--prompt-format", "ids"], "--prompt-format ids does not apply"),
        (["--result-filename", "r.json"], "add --save-result"),
        (["--save-result", "--result-json", "r.json"], "--result-json r.json with --save-result"),
        (["--percentile-metrics", "ttft,p99"], "--percentile-metrics 'ttft,p99'"),
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
