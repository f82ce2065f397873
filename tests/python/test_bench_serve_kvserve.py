"""`kvserve bench serve` against a real `kvserve serve` process of a tiny model: every request
completes with exactly the asked number of tokens, the figures are filled in, and the counts agree
with the server's own Prometheus counters."""

import json

import pytest
from server_process import ServerProcess

from kvserve.cli import main
from kvserve.tokenizer import Tokenizer

NUM_PROMPTS, INPUT_LEN, OUTPUT_LEN = 12, 16, 8


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with ServerProcess(tiny_model_dir("LlamaForCausalLM"), "--served-model-name", "tiny") as process:
        yield process


def bench_serve(server, model_dir, result_json, *flags):
    argv = ["bench", "serve", "--base-url", server.url, "--model", "tiny", "--tokenizer", str(model_dir),
            "--num-prompts", str(NUM_PROMPTS), "--random-input-len", str(INPUT_LEN),
            "--random-output-len", str(OUTPUT_LEN), "--result-json", str(result_json), "--disable-tqdm", *flags]
    status = main(argv)
    return status, json.loads(result_json.read_text()) if result_json.exists() else None


def test_every_request_completes_with_exact_counts(server, tiny_model_dir, tmp_path):
    generated_before = server.metric("kvserve:generation_tokens_total")
    status, result = bench_serve(server, tiny_model_dir("LlamaForCausalLM"), tmp_path / "r.json",
                                 "--max-concurrency", "4", "--request-rate", "50", "--seed", "3")
    assert status == 0
    assert (result["completed"], result["failed"]) == (NUM_PROMPTS, 0)
    assert result["total_input_tokens"] == NUM_PROMPTS * INPUT_LEN
    assert result["output_lens"] == [OUTPUT_LEN] * NUM_PROMPTS
    assert result["prompt_format"] == "ids"
    for metric in ("mean_ttft_ms", "median_tpot_ms", "mean_itl_ms", "mean_e2el_ms", "output_throughput"):
        assert result[metric] > 0, metric
    assert result["mean_e2el_ms"] >= result["mean_ttft_ms"]
    # The server generated what the client counted, plus the one untimed probe request bench serve
    # sends first (the first prompt, to check the prompt format and warm the server up).
    generated = server.metric("kvserve:generation_tokens_total") - generated_before
    assert generated == (NUM_PROMPTS + 1) * OUTPUT_LEN


def test_the_openai_chat_backend_streams_chat_completions(server, tiny_model_dir, tmp_path):
    """vLLM's openai-chat backend: each prompt's text as a user message to /v1/chat/completions; the
    first chunk (the role alone) starts no clock, and the usage counts every request's exact tokens."""
    generated_before = server.metric("kvserve:generation_tokens_total")
    status, result = bench_serve(server, tiny_model_dir("LlamaForCausalLM"), tmp_path / "r.json",
                                 "--backend", "openai-chat", "--max-concurrency", "4")
    assert status == 0 and result["endpoint"] == "/v1/chat/completions" and result["prompt_format"] == "text"
    assert (result["completed"], result["failed"]) == (NUM_PROMPTS, 0)
    assert result["output_lens"] == [OUTPUT_LEN] * NUM_PROMPTS
    assert result["mean_ttft_ms"] > 0 and result["mean_e2el_ms"] >= result["mean_ttft_ms"]
    assert server.metric("kvserve:generation_tokens_total") - generated_before == (NUM_PROMPTS + 1) * OUTPUT_LEN


def test_text_prompts_are_counted_as_the_server_counts_them(server, tiny_model_dir, tmp_path):
    """--prompt-format text: the random ids' text re-tokenizes to other lengths; what the client
    counts as input must be what the server encoded (its BOS included)."""
    prompt_before = server.metric("kvserve:prompt_tokens_total")
    status, result = bench_serve(server, tiny_model_dir("LlamaForCausalLM"), tmp_path / "r.json",
                                 "--prompt-format", "text", "--random-input-len", "48")
    assert status == 0 and result["prompt_format"] == "text" and result["failed"] == 0
    # Plus the untimed probe request, which is the first prompt.
    prompt_tokens = server.metric("kvserve:prompt_tokens_total") - prompt_before
    assert prompt_tokens == result["total_input_tokens"] + result["input_lens"][0]
    assert sum(n == 48 for n in result["input_lens"]) >= NUM_PROMPTS // 2


def test_a_wrong_model_name_stops_with_the_servers_error(server, tiny_model_dir, tmp_path):
    argv = ["bench", "serve", "--base-url", server.url, "--model", "not-served",
            "--tokenizer", str(tiny_model_dir("LlamaForCausalLM")), "--num-prompts", "3",
            "--random-input-len", "4", "--random-output-len", "2", "--disable-tqdm",
            "--result-json", str(tmp_path / "r.json")]
    with pytest.raises(SystemExit, match=r"HTTP 404 .*The model `not-served` does not exist"):
        main(argv)
    assert not (tmp_path / "r.json").exists()


def test_a_sharegpt_dataset_sends_its_prompts_and_reply_lengths(server, tiny_model_dir, tmp_path):
    """--dataset FILE: each usable conversation's first turn is a prompt (encoded as the server
    would), its reply's token count the output length; conversations too long for the served
    model's max_model_len (from /v1/models) are passed over."""
    model_dir = tiny_model_dir("LlamaForCausalLM")
    chats = [
        [{"from": "human", "value": "tell me a story"}, {"from": "gpt", "value": "once upon a time"}],
        [{"from": "human", "value": "word " * 300}, {"from": "gpt", "value": "too long for 256 tokens"}],
        [{"from": "human", "value": "two plus two"}, {"from": "gpt", "value": "four, surely"}],
    ]
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(json.dumps({"conversations": c}) for c in chats))
    argv = ["bench", "serve", "--base-url", server.url, "--model", "tiny", "--tokenizer", str(model_dir),
            "--dataset", str(path), "--num-prompts", "2", "--result-json", str(tmp_path / "r.json"),
            "--disable-tqdm"]
    assert main(argv) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    tokenizer = Tokenizer.from_pretrained(model_dir)
    used = [chats[0], chats[2]]
    assert (result["completed"], result["failed"], result["dataset"]) == (2, 0, str(path))
    assert result["total_input_tokens"] == sum(len(tokenizer.encode(c[0]["value"])) for c in used)
    assert sorted(result["output_lens"]) == sorted(len(tokenizer.encode(c[1]["value"], add_special_tokens=False))
                                                   for c in used)
