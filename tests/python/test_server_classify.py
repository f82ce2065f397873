"""A classifier served (`kvserve serve` on a *ForSequenceClassification checkpoint, which pools by
default): POST /classify gives the offline engine's probabilities and vLLM's response; a
cross-encoder answers /score and /rerank by its scores of the pairs; /pooling every token's classes;
and 400s for what does not fit."""

from __future__ import annotations

import math

import httpx
import pytest

from kvserve import Engine
from server_process import ServerProcess

LABELS = {0: "negative", 1: "neutral", 2: "positive"}
TEXTS = ["The capital of France is", "Hello", "A longer sentence, whose tokens fill more than one block."]


def offline(directory) -> Engine:
    return Engine(str(directory), dtype="float32", kv_cache_memory_gb=0.02, device="cpu")


@pytest.fixture(scope="module")
def classifier_dir(tiny_model_dir):
    return tiny_model_dir("LlamaForSequenceClassification", num_labels=3, id2label=LABELS)


@pytest.fixture(scope="module")
def cross_encoder_dir(tiny_model_dir):
    return tiny_model_dir("Qwen3ForSequenceClassification", num_labels=1)


def test_classify_gives_the_offline_engines_probabilities(classifier_dir):
    expected = offline(classifier_dir).classify(TEXTS, use_tqdm=False)
    with ServerProcess(classifier_dir, "--served-model-name", "cls", "--api-key", "k") as server:
        headers = {"Authorization": "Bearer k"}
        assert httpx.post(server.url + "/classify", json={"input": TEXTS}).status_code == 401
        response = httpx.post(server.url + "/classify", json={"model": "cls", "input": TEXTS}, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["object"] == "list" and body["model"] == "cls" and body["id"].startswith("classify-")
        for i, (item, want) in enumerate(zip(body["data"], expected)):
            assert item["index"] == i and item["num_classes"] == 3
            assert item["probs"] == pytest.approx(want.outputs.probs, abs=1e-6)
            assert item["label"] == LABELS[max(range(3), key=want.outputs.probs.__getitem__)]
        num_tokens = sum(len(o.prompt_token_ids) for o in expected)
        assert body["usage"] == {"prompt_tokens": num_tokens, "total_tokens": num_tokens, "completion_tokens": 0}
        tokens = httpx.post(server.url + "/v1/classify", json={"input": [5, 9, 100]}, headers=headers).json()
        assert len(tokens["data"]) == 1 and tokens["usage"]["prompt_tokens"] == 3

        for path, body, message in [
            ("/v1/embeddings", {"input": "a"}, "this model is a classifier: POST /classify"),
            ("/score", {"text_1": "a", "text_2": ["b"]}, "needs a cross-encoder (one class); this classifier has 3"),
            ("/v1/completions", {"prompt": "a"}, ""),
            ("/classify", {"input": [5, 99999]}, "outside the vocabulary"),
        ]:
            refused = httpx.post(server.url + path, json=body, headers=headers)
            assert refused.status_code == 400, (path, refused.text)
            assert message in refused.json()["error"]["message"]
        assert httpx.get(server.url + "/health").status_code == 200  # still serving


def test_pooling_gives_every_tokens_classes(classifier_dir):
    """POST /pooling on a classifier: token_classify by default, a row of class probabilities per
    prompt token, the last one /classify's; use_activation false, logits; task classify, /classify's."""
    expected = offline(classifier_dir).classify(TEXTS, use_tqdm=False)
    with ServerProcess(classifier_dir, "--served-model-name", "cls") as server:
        response = httpx.post(server.url + "/pooling", json={"model": "cls", "input": TEXTS})
        assert response.status_code == 200, response.text
        body = response.json()
        for item, want in zip(body["data"], expected):
            rows = item["data"]
            assert len(rows) == len(want.prompt_token_ids) and all(sum(r) == pytest.approx(1, abs=1e-6) for r in rows)
            assert rows[-1] == pytest.approx(want.outputs.probs, abs=1e-6)
        logits = httpx.post(server.url + "/pooling", json={"input": TEXTS[0], "use_activation": False}).json()
        last = logits["data"][0]["data"][-1]
        softmax = [math.exp(v) / sum(math.exp(u) for u in last) for v in last]
        assert softmax == pytest.approx(expected[0].outputs.probs, abs=1e-6)
        one = httpx.post(server.url + "/pooling", json={"input": TEXTS[1], "task": "classify"}).json()
        assert one["data"][0]["data"] == pytest.approx(expected[1].outputs.probs, abs=1e-6)
        # normalize is an embedding's: the head still reads the state as it is.
        same = httpx.post(server.url + "/pooling", json={"input": TEXTS[1], "task": "classify", "normalize": True})
        assert same.json()["data"][0]["data"] == pytest.approx(expected[1].outputs.probs, abs=1e-6)
        refused = httpx.post(server.url + "/pooling", json={"input": "a", "task": "token_embed"})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "task"
        assert "this model is a classifier" in refused.json()["error"]["message"]


def test_a_cross_encoder_scores_and_reranks_pairs(cross_encoder_dir):
    query, documents = "What is the capital of France?", ["Bread needs flour.", "Paris is the capital.", "ka lo mi"]
    expected = [o.outputs.score for o in offline(cross_encoder_dir).score(query, documents, use_tqdm=False)]
    with ServerProcess(cross_encoder_dir, "--served-model-name", "rerank") as server:
        scored = httpx.post(server.url + "/score", json={"text_1": query, "text_2": documents}).json()
        assert [d["score"] for d in scored["data"]] == pytest.approx(expected, abs=1e-6)
        ranked = httpx.post(server.url + "/v1/rerank", json={"query": query, "documents": documents, "top_n": 2}).json()
        order = sorted(range(3), key=lambda i: -expected[i])[:2]
        assert [r["index"] for r in ranked["results"]] == order
        assert [r["relevance_score"] for r in ranked["results"]] == pytest.approx([expected[i] for i in order], abs=1e-6)
        one = httpx.post(server.url + "/classify", json={"input": "a"}).json()
        assert one["data"][0]["num_classes"] == 1 and one["data"][0]["label"] == "LABEL_0"
        # use_activation false: the logit, whose sigmoid the score is.
        raw = httpx.post(server.url + "/score", json={"text_1": query, "text_2": documents[:1],
                                                      "use_activation": False}).json()
        assert 1 / (1 + math.exp(-raw["data"][0]["score"])) == pytest.approx(expected[0], abs=1e-6)


def test_a_generating_server_has_no_classify(tiny_server):
    refused = httpx.post(tiny_server.url + "/classify", json={"input": "a"})
    assert refused.status_code == 400 and "--runner pooling" in refused.json()["error"]["message"]
