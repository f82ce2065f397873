"""`kvserve bench throughput` on a tiny random model: exact token counts, the JSON result, the
datasets, and clear errors for bad flags. Speed is not checked here (bench/ measures it)."""

import json
import random

import pytest
import torch

from kvserve.bench.flops import workload_flops
from kvserve.cli import main
from kvserve.kv_cache import kv_bytes_per_token
from kvserve.model_config import ModelConfig
from kvserve.tokenizer import Tokenizer

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("LlamaForCausalLM")  # vocab 1000, max_position_embeddings 256, float32


def throughput(model_dir, tmp_path, *flags) -> dict:
    result_json = tmp_path / "result.json"
    assert main(["bench", "throughput", "--model", str(model_dir), "--disable-tqdm",
                 "--result-json", str(result_json), *flags]) == 0
    return json.loads(result_json.read_text())


def test_random_dataset_counts_exact_tokens_and_reports_efficiency(model_dir, tmp_path, capsys):
    r = throughput(model_dir, tmp_path, "--num-prompts", "3", "--input-len", "5", "--output-len", "4")
    assert (r["num_requests"], r["total_input_tokens"], r["total_output_tokens"]) == (3, 15, 12)
    wall = r["wall_s"]
    assert r["requests_per_s"] * wall == pytest.approx(3)
    assert r["output_tok_s"] * wall == pytest.approx(12)
    assert r["total_tok_s"] * wall == pytest.approx(27)
    assert r["flops"] == workload_flops(ModelConfig.from_pretrained(model_dir), [(5, 4)] * 3)
    gemm = r["gemm"]
    assert (gemm["dtype"], gemm["size"], gemm["device"]) == ("float32", 2048, "cpu") and gemm["repeats"] >= 3
    assert r["compute_efficiency"] == pytest.approx(r["flops"] / wall / gemm["flops_per_s"])
    assert r["dtype"] == "float32" and r["engine_args"]["max_num_seqs"] == 256 and r["num_preemptions"] == 0
    assert r["peak_rss_bytes"] > 100e6 and r["peak_gpu_memory_bytes"] is None
    table = capsys.readouterr().out
    assert "Successful requests:                     3" in table
    assert "Total generated tokens:                  12" in table
    assert "Compute efficiency (%):" in table


def test_case_sets_the_lengths_and_engine_flags_reach_the_engine(model_dir, tmp_path):
    r = throughput(model_dir, tmp_path, "--case", "offline-4-6-3", "--skip-tokenizer-init",
                   "--max-num-seqs", "2", "--kv-cache-memory", "0.01", "--kv-cache-dtype", "fp8")
    assert (r["case"], r["num_requests"], r["total_input_tokens"], r["total_output_tokens"]) == (
        "offline-4-6-3", 4, 24, 12)
    assert r["engine_args"]["max_num_seqs"] == 2 and r["engine_args"]["skip_tokenizer_init"]
    block_size = r["engine_args"]["block_size"] or 16
    bytes_per_block = block_size * kv_bytes_per_token(ModelConfig.from_pretrained(model_dir), torch.float8_e4m3fn)
    assert r["kv_cache_dtype"] == "float8_e4m3fn"
    assert r["kv_cache_tokens"] == (int(0.01 * 2**30 // bytes_per_block) - 1) * block_size


def test_disable_detokenize_leaves_the_text_out_and_says_so(model_dir, tmp_path, monkeypatch):
    from kvserve import Engine

    texts = []
    generate = Engine.generate

    def recording(self, *args, **kwargs):
        outputs = generate(self, *args, **kwargs)
        texts.extend(output.outputs[0].text for output in outputs)
        return outputs

    monkeypatch.setattr(Engine, "generate", recording)
    r = throughput(model_dir, tmp_path, "--num-prompts", "2", "--input-len", "5", "--output-len", "4",
                   "--disable-detokenize")
    assert r["detokenize"] is False and r["total_output_tokens"] == 8
    assert texts == ["", "", ""]  # the warm-up request, then the two
    texts.clear()
    assert throughput(model_dir, tmp_path, "--num-prompts", "2", "--input-len", "5", "--output-len", "4")["detokenize"]
    assert all(texts) and len(texts) == 3


def write_sharegpt(path, conversations):
    path.write_text("\n".join(json.dumps({"id": str(i), "conversations": c}) for i, c in enumerate(conversations)))
    return path


def turn(who, text):
    return {"from": who, "value": text}


SHAREGPT = [
    [turn("human", "tell me a story about the sea"), turn("gpt", "once upon a time there was a model")],
    [turn("human", "only one turn, never used")],
    [turn("human", "what is two plus two, exactly"), turn("gpt", "four"), turn("human", "sure?"), turn("gpt", "yes")],
    [turn("human", "and what about the weather today"), turn("gpt", "sunny with a chance of tokens")],
    [turn("human", "name three colours of the rainbow"), turn("gpt", "red, orange and yellow, among others")],
]


def test_sharegpt_dataset_takes_vllms_seeded_sample(model_dir, tmp_path):
    """As vLLM: the conversations of two turns or more shuffled with --seed, those with a prompt or
    reply under 4 tokens passed over (the reply "four"), unless --output-len fixes the length."""
    path = write_sharegpt(tmp_path / "chats.jsonl", SHAREGPT)
    tokenizer = Tokenizer.from_pretrained(model_dir)
    assert len(tokenizer.encode("four", add_special_tokens=False)) < 4
    for seed in (0, 1):
        shuffled = [c for c in SHAREGPT if len(c) >= 2]
        random.Random(seed).shuffle(shuffled)
        used = [c for c in shuffled if c is not SHAREGPT[2]][:2]
        r = throughput(model_dir, tmp_path, "--dataset-name", "sharegpt", "--dataset-path", str(path),
                       "--num-prompts", "2", "--seed", str(seed))
        assert r["total_input_tokens"] == sum(len(tokenizer.encode(c[0]["value"])) for c in used)
        assert r["total_output_tokens"] == sum(len(tokenizer.encode(c[1]["value"], add_special_tokens=False))
                                               for c in used)
    fixed = throughput(model_dir, tmp_path, "--dataset", str(path), "--num-prompts", "4", "--output-len", "2")
    assert fixed["total_output_tokens"] == 8 and fixed["num_requests"] == 4
    assert fixed["total_input_tokens"] == sum(len(tokenizer.encode(c[0]["value"])) for c in SHAREGPT if len(c) >= 2)


def test_output_json_is_vllms_name_for_result_json(model_dir, tmp_path):
    path = tmp_path / "out.json"
    assert main(["bench", "throughput", "--model", str(model_dir), "--disable-tqdm", "--dataset-name", "random",
                 "--num-prompts", "2", "--input-len", "3", "--output-len", "2", "--output-json", str(path)]) == 0
    assert json.loads(path.read_text())["total_output_tokens"] == 4


@pytest.mark.parametrize("flags, message", [
    (["--case", "serve-4-8-8@inf"], "--case serve-4-8-8@inf: expected an offline-N-IN-OUT case"),
    (["--case", "offline-4-8"], "bad case 'offline-4-8'"),
    (["--case", "offline-2-4-4", "--num-prompts", "3"], "drop --dataset, --num-prompts"),
    (["--num-prompts", "2", "--input-len", "4"], "missing --output-len"),
    (["--num-prompts", "0", "--input-len", "4", "--output-len", "2"], "--num-prompts 0: expected >= 1"),
    (["--dataset", "no-such.jsonl", "--num-prompts", "2"], "--dataset no-such.jsonl: no such file"),
    (["--dataset", "{chats}", "--num-prompts", "2", "--input-len", "4"], "--input-len 4: a dataset file sets"),
    (["--dataset", "{chats}", "--num-prompts", "2", "--skip-tokenizer-init"], "needs the tokenizer"),
    (["--dataset", "{chats}", "--num-prompts", "4"], "3 usable conversations .* fewer than --num-prompts 4"),
    (["--dataset-name", "sharegpt", "--num-prompts", "2"], "--dataset-name sharegpt needs --dataset-path FILE"),
    (["--dataset", "{chats}", "--dataset-path", "{chats}", "--num-prompts", "2"], "give one or the other"),
    (["--dataset", "{bad}", "--num-prompts", "1"], "not JSON Lines nor a JSON list"),
    (["--num-prompts", "2", "--input-len", "300", "--output-len", "2"], "max_model_len"),
    (["--num-prompts", "2", "--input-len", "4", "--output-len", "2", "--block-size", "3"], "block_size"),
])
def test_bad_flags_exit_with_the_reason(model_dir, tmp_path, flags, message):
    chats = write_sharegpt(tmp_path / "chats.jsonl", SHAREGPT)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    flags = [f.format(chats=chats, bad=bad) for f in flags]
    with pytest.raises(SystemExit, match=f"^kvserve bench throughput: .*{message}"):
        main(["bench", "throughput", "--model", str(model_dir), "--disable-tqdm", *flags])


def test_preset_and_model_are_exclusive(model_dir, capsys):
    with pytest.raises(SystemExit):
        main(["bench", "throughput", "--model", str(model_dir), "--preset", "tiny", "--case", "offline-1-1-1"])
    assert "not allowed with argument --model" in capsys.readouterr().err
