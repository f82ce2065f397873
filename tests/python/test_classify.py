"""Classifiers (kvserve.classify: *ForSequenceClassification checkpoints) against transformers on the
same weights: Engine.classify's probabilities and a cross-encoder's Engine.score within 1e-5
(float32), the prompts tokenized as transformers does (a pair as its tokenizer(text, text_pair));
a causal LM read as a reranker from its LM head's rows (classifier_from_token); and what a
classifier refuses."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kvserve import Engine, PoolingParams
from tiny_models import tiny_hf_model

ARCHITECTURES = ["LlamaForSequenceClassification", "MistralForSequenceClassification",
                 "Qwen2ForSequenceClassification", "Qwen3ForSequenceClassification"]
TEXTS = ["The capital of France is", "ka lo mi ne ru sa ti vo ze str ing ion 7 42 and then some more", "Hi"]
LABELS = {0: "negative", 1: "neutral", 2: "positive"}


def make_engine(directory, **kwargs) -> Engine:
    return Engine(str(directory), dtype="float32", kv_cache_memory_gb=0.01, device="cpu", **kwargs)


def hf_logits(model, token_ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits[0]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_class_probabilities_equal_transformers(tiny_model_dir, architecture):
    directory = tiny_model_dir(architecture, num_labels=3, id2label=LABELS)
    model = tiny_hf_model(architecture, num_labels=3, id2label=LABELS)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    engine = make_engine(directory)
    assert engine.classifier.labels == ("negative", "neutral", "positive")
    outputs = engine.classify(TEXTS, use_tqdm=False)
    for text, output in zip(TEXTS, outputs):
        assert output.prompt_token_ids == tokenizer(text)["input_ids"]
        expected = hf_logits(model, output.prompt_token_ids).softmax(0)
        torch.testing.assert_close(torch.tensor(output.outputs.probs), expected, rtol=0, atol=1e-5)
        assert output.outputs.num_classes == 3
    stats = engine.stats()
    assert not engine.has_unfinished_requests() and stats.num_free_blocks == stats.num_blocks - 1


def test_a_cross_encoder_scores_each_pair_as_transformers(tiny_model_dir):
    directory = tiny_model_dir("Qwen3ForSequenceClassification", num_labels=1)
    model = tiny_hf_model("Qwen3ForSequenceClassification", num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    engine = make_engine(directory)
    documents = ["Paris is the capital of France.", "Bread needs flour and water.", "ka lo mi"]
    scores = engine.score("What is the capital of France?", documents, use_tqdm=False)
    for document, output in zip(documents, scores):
        pair = tokenizer("What is the capital of France?", document)["input_ids"]
        assert output.prompt_token_ids == pair
        assert output.outputs.score == pytest.approx(float(hf_logits(model, pair)[0].sigmoid()), abs=1e-5)
    # One class: classify() gives its sigmoid too, as vLLM's; without the activation, the logit (a
    # reward model's score).
    (single,) = engine.classify([{"prompt_token_ids": scores[0].prompt_token_ids}], use_tqdm=False)
    assert single.outputs.probs == pytest.approx([scores[0].outputs.score], abs=1e-6)
    logit = float(hf_logits(model, scores[0].prompt_token_ids)[0])
    (raw,) = engine.classify([{"prompt_token_ids": scores[0].prompt_token_ids}], PoolingParams(use_activation=False),
                             use_tqdm=False)
    assert raw.outputs.probs == pytest.approx([logit], abs=1e-5)
    raw_scores = engine.score("What is the capital of France?", documents[:1], use_tqdm=False,
                              pooling_params=PoolingParams(use_activation=False))
    assert raw_scores[0].outputs.score == pytest.approx(logit, abs=1e-5)


def test_what_a_classifier_refuses(tiny_model_dir):
    directory = tiny_model_dir("LlamaForSequenceClassification", num_labels=3, id2label=LABELS)
    with pytest.raises(ValueError, match="is a classifier .* it generates nothing"):
        make_engine(directory, runner="generate")
    engine = make_engine(directory)
    with pytest.raises(ValueError, match="this model is a classifier: classify"):
        engine.embed(TEXTS, use_tqdm=False)
    with pytest.raises(ValueError, match="needs a cross-encoder \\(one class\\); this classifier has 3"):
        engine.score("a", ["b"], use_tqdm=False)
    with pytest.raises(ValueError, match="classify\\(\\) needs a classifier"):
        make_engine(tiny_model_dir("LlamaForCausalLM"), runner="pooling").classify(TEXTS, use_tqdm=False)


@pytest.mark.parametrize("tied", [False, True])
def test_a_causal_lm_read_as_a_reranker_from_two_tokens(tiny_model_dir, tied):
    """vLLM's classifier_from_token (Qwen3-Reranker's recipe): the score is the sigmoid of the LM
    head's logit of "yes" less that of "no" at the pair's last token."""
    directory = tiny_model_dir("Qwen3ForCausalLM", tie_word_embeddings=tied)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    no, yes = 37, 58
    overrides = {"architectures": ["Qwen3ForSequenceClassification"],
                 "classifier_from_token": tokenizer.convert_ids_to_tokens([no, yes])}
    engine = make_engine(directory, hf_overrides=overrides)
    documents = ["Paris is the capital of France.", "Bread needs flour and water."]
    for document, output in zip(documents, engine.score("What is the capital of France?", documents, use_tqdm=False)):
        logits = hf_logits(model, output.prompt_token_ids)[-1]
        assert output.outputs.score == pytest.approx(float((logits[yes] - logits[no]).sigmoid()), abs=1e-5)
    # One token: its logit, through the sigmoid.
    one_token = {**overrides, "classifier_from_token": overrides["classifier_from_token"][1:]}
    engine = make_engine(directory, hf_overrides=one_token)
    (output,) = engine.classify(["ka lo mi"], use_tqdm=False)
    logit = hf_logits(model, output.prompt_token_ids)[-1][yes]
    assert output.outputs.probs == pytest.approx([float(logit.sigmoid())], abs=1e-5)


@pytest.mark.parametrize("overrides, message", [
    ({"architectures": ["Qwen3ForSequenceClassification"], "classifier_from_token": ["not-a-token-at-all"]},
     "are not tokens of"),
    ({"architectures": ["Qwen3ForSequenceClassification"], "classifier_from_token": ["a", "b", "c"]},
     "a list of one or two tokens"),
    ({"classifier_from_token": ["a"]}, "expected a \\*ForSequenceClassification architecture"),
])
def test_a_bad_classifier_from_token_is_a_value_error(tiny_model_dir, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_engine(tiny_model_dir("Qwen3ForCausalLM"), hf_overrides=overrides)
