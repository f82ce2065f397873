"""POST /v1/embeddings on a pooling server (`kvserve serve MODEL --runner pooling`), through the real
openai client: the offline engine's vectors for the same prompts (text or token ids; base64, the
client's default, or floats), OpenAI's usage, and 400s for what a pooling server does not do; vLLM's
POST /pooling (every token's embedding)."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import openai
import pytest

from kvserve import Engine
from server_process import ServerProcess

MODEL = "tiny-embed"
INPUTS = ["The capital of France is", "Hello", "A longer sentence, whose tokens fill more than one block of the cache."]


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with ServerProcess(tiny_model_dir("LlamaForCausalLM"), "--served-model-name", MODEL, "--runner", "pooling",
                       "--max-model-len", "128", "--enable-log-requests") as process:
        yield process


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused")


@pytest.fixture(scope="module")
def offline(tiny_model_dir):
    engine = Engine(str(tiny_model_dir("LlamaForCausalLM")), runner="pooling", dtype="float32",
                    kv_cache_memory_gb=0.02)
    return {text: np.array(o.outputs.embedding) for text, o in zip(INPUTS, engine.embed(INPUTS, use_tqdm=False))}


def test_embeddings_are_the_offline_engines(client, offline):
    response = client.embeddings.create(model=MODEL, input=INPUTS)  # the client asks for base64, and decodes it
    assert [d.index for d in response.data] == [0, 1, 2] and response.model == MODEL
    for text, item in zip(INPUTS, response.data):
        np.testing.assert_allclose(item.embedding, offline[text], atol=1e-6)
        assert abs(np.linalg.norm(item.embedding) - 1) < 1e-5
    floats = client.embeddings.create(model=MODEL, input=INPUTS[0], encoding_format="float")
    np.testing.assert_allclose(floats.data[0].embedding, offline[INPUTS[0]], atol=1e-6)
    tokens = client.embeddings.create(model=MODEL, input=[[5, 9, 100, 7], [42]], encoding_format="float")
    assert len(tokens.data) == 2 and tokens.usage.prompt_tokens == tokens.usage.total_tokens == 5


def test_each_input_is_logged_with_enable_log_requests(server, client):
    client.embeddings.create(model=MODEL, input=["logged once", "and twice"])
    lines = [line for line in server.log if "Received request embd-" in line and "PoolingParams(" in line]
    assert any("prompt: 'logged once'" in line for line in lines) and any("'and twice'" in line for line in lines)


def test_vllm_extras_normalize_and_truncate(server, client, offline):
    raw = httpx.post(server.url + "/v1/embeddings", json={"model": MODEL, "input": INPUTS[2], "normalize": False})
    vector = np.array(raw.json()["data"][0]["embedding"])
    np.testing.assert_allclose(vector / np.linalg.norm(vector), offline[INPUTS[2]], atol=1e-5)
    cut = client.embeddings.create(model=MODEL, input=INPUTS[2], extra_body={"truncate_prompt_tokens": 3})
    assert cut.usage.prompt_tokens == 3


def test_pooling_gives_every_tokens_embedding_or_the_prompts(server, offline):
    """POST /pooling (vLLM's): token_embed by default, a row per prompt token, the last one the
    prompt's embedding (LAST pooling); task embed, the embedding; base64, the same floats."""
    response = httpx.post(server.url + "/pooling", json={"model": MODEL, "input": INPUTS})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["model"] == MODEL and body["id"].startswith("pool-")
    rows = [np.array(item["data"]) for item in body["data"]]
    assert [item["index"] for item in body["data"]] == [0, 1, 2] and body["data"][0]["object"] == "pooling"
    assert body["usage"]["prompt_tokens"] == sum(len(r) for r in rows) > len(INPUTS)
    for text, tokens in zip(INPUTS, rows):
        assert tokens.shape[1] == 64 and np.allclose(np.linalg.norm(tokens, axis=1), 1, atol=1e-5)
        np.testing.assert_allclose(tokens[-1], offline[text], atol=1e-6)
    encoded = httpx.post(server.url + "/pooling", json={"input": INPUTS[2], "encoding_format": "base64"}).json()
    floats = np.frombuffer(base64.b64decode(encoded["data"][0]["data"]), dtype="<f4")
    np.testing.assert_array_equal(floats.reshape(rows[2].shape), rows[2].astype(np.float32))
    one = httpx.post(server.url + "/pooling", json={"input": INPUTS[0], "task": "embed"}).json()
    np.testing.assert_allclose(one["data"][0]["data"], offline[INPUTS[0]], atol=1e-6)


@pytest.mark.parametrize("path, body, param, message", [
    ("/pooling", {"input": "x", "task": "token_classify"}, "task", "needs a classifier's checkpoint"),
    ("/pooling", {"input": "x", "task": "tokens"}, "task", "token_embed"),
    ("/v1/embeddings", {"input": "x", "dimensions": 8}, "dimensions", "not Matryoshka"),
    ("/v1/embeddings", {"input": [[1] * 200]}, "input", "1 to 127 tokens"),
    ("/v1/embeddings", {"input": []}, "input", "expected a string"),
    ("/v1/embeddings", {"input": "x", "encoding_format": "int8"}, "encoding_format", "float"),
    ("/v1/completions", {"prompt": "x"}, "model", "it serves /v1/embeddings, not /v1/completions"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, "model", "this server pools"),
])
def test_what_a_pooling_server_refuses_is_a_400(server, path, body, param, message):
    response = httpx.post(server.url + path, json={"model": MODEL, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert message in error["message"] and error["param"] == param


def test_metrics_count_pooled_prompts(server, client):
    def prompt_tokens() -> float:
        for line in httpx.get(server.url + "/metrics").text.splitlines():
            if line.startswith("kvserve:prompt_tokens_total{"):
                return float(line.split()[-1])
        raise AssertionError("no kvserve:prompt_tokens_total")

    before = prompt_tokens()
    usage = client.embeddings.create(model=MODEL, input=INPUTS).usage
    assert prompt_tokens() - before == usage.prompt_tokens > 0


def test_a_generating_server_refuses_embeddings(tiny_server):
    response = httpx.post(tiny_server.url + "/v1/embeddings", json={"model": "tiny", "input": "x"})
    assert response.status_code == 400 and "--runner pooling" in response.json()["error"]["message"]


def test_score_and_rerank_are_cosine_similarities_of_the_embeddings(server, offline):
    def cosine(a, b) -> float:
        return float(np.dot(offline[a], offline[b]) / np.linalg.norm(offline[a]) / np.linalg.norm(offline[b]))

    response = httpx.post(server.url + "/score", json={"model": MODEL, "text_1": INPUTS[0], "text_2": INPUTS})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [d["index"] for d in body["data"]] == [0, 1, 2] and body["usage"]["prompt_tokens"] > 0
    np.testing.assert_allclose([d["score"] for d in body["data"]], [cosine(INPUTS[0], t) for t in INPUTS], atol=1e-5)
    pairs = httpx.post(server.url + "/v1/score", json={"model": MODEL, "text_1": INPUTS[:2], "text_2": INPUTS[1:]}).json()
    np.testing.assert_allclose([d["score"] for d in pairs["data"]], [cosine(INPUTS[0], INPUTS[1]),
                                                                    cosine(INPUTS[1], INPUTS[2])], atol=1e-5)
    ranked = httpx.post(server.url + "/v1/rerank", json={"model": MODEL, "query": INPUTS[2], "documents": INPUTS,
                                                         "top_n": 2}).json()
    assert [r["index"] for r in ranked["results"]][0] == 2 and len(ranked["results"]) == 2  # itself first
    assert ranked["results"][0]["document"] == {"text": INPUTS[2]}
    assert ranked["results"][0]["relevance_score"] >= ranked["results"][1]["relevance_score"]
    bad = httpx.post(server.url + "/score", json={"model": MODEL, "text_1": INPUTS[:2], "text_2": INPUTS})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "text_1"


def test_bench_serve_measures_an_embeddings_server(server, tiny_model_dir, tmp_path, capsys):
    """kvserve bench serve --backend openai-embeddings (vLLM's): each prompt's vector asked for, the
    latencies and input throughput reported, nothing generated."""
    from kvserve.cli import main

    before = server.metric("kvserve:prompt_tokens_total")
    result_json = tmp_path / "r.json"
    assert main(["bench", "serve", "--base-url", server.url, "--model", MODEL, "--backend", "openai-embeddings",
                 "--tokenizer", str(tiny_model_dir("LlamaForCausalLM")), "--num-prompts", "6",
                 "--random-input-len", "16", "--random-output-len", "1", "--result-json", str(result_json),
                 "--disable-tqdm"]) == 0
    result = json.loads(result_json.read_text())
    assert (result["completed"], result["failed"], result["endpoint"]) == (6, 0, "/v1/embeddings")
    assert result["total_input_tokens"] == 6 * 16 and result["total_output_tokens"] == 0
    assert result["mean_e2el_ms"] > 0 and result["request_throughput"] > 0
    assert server.metric("kvserve:prompt_tokens_total") - before == 7 * 16  # and the untimed probe request
    table = capsys.readouterr().out
    assert "Mean E2EL (ms):" in table and "generated" not in table and "TTFT" not in table


def test_a_conversation_is_embedded_through_the_chat_template(server, tiny_model_dir):
    """vLLM's chat embedding request: messages rendered as /tokenize renders them, then pooled."""
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    rendered = httpx.post(server.url + "/tokenize", json={"model": MODEL, "messages": messages,
                                                          "add_generation_prompt": False}).json()["tokens"]
    chat = httpx.post(server.url + "/v1/embeddings", json={"model": MODEL, "messages": messages,
                                                           "encoding_format": "float"}).json()
    same = httpx.post(server.url + "/v1/embeddings", json={"model": MODEL, "input": rendered,
                                                           "encoding_format": "float"}).json()
    assert chat["usage"]["prompt_tokens"] == len(rendered)
    np.testing.assert_allclose(chat["data"][0]["embedding"], same["data"][0]["embedding"], atol=1e-6)
    both = httpx.post(server.url + "/v1/embeddings", json={"model": MODEL, "messages": messages, "input": "x"})
    assert both.status_code == 400 and "either input or messages" in both.json()["error"]["message"]
