"""vLLM's pooling tasks (Engine.encode, Engine.reward) against transformers on the same random weights,
float32: token_embed gives every prompt token's final hidden state, normalized as the pooler says;
token_classify every token's classes through the classifier's head; embed and classify what
embed() and classify() give. Prompts cross blocks and are prefilled in chunks; a token task computes
every token, whatever the prefix cache holds; no request keeps a block."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kvserve import Engine, PoolingParams
from kvserve.pooling import PooledState, PoolerConfig
from test_engine import assert_no_blocks_held
from tiny_models import tiny_hf_model
from tiny_tokenizer import save_tiny_tokenizer

PROMPTS = [[5, 9, 100, 7], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [42], [900 - 37 * i for i in range(17)]]
LABELS = {0: "negative", 1: "neutral", 2: "positive"}


def _engine(directory) -> Engine:
    return Engine(str(directory), dtype="float32", kv_cache_memory_gb=0.05, block_size=4, max_num_batched_tokens=8,
                  device="cpu")


def _inputs(prompts=PROMPTS) -> list[dict]:
    return [{"prompt_token_ids": p} for p in prompts]


def _hidden(model, prompt) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([prompt])).last_hidden_state[0]


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    """A base model's checkpoint (an embedding model's: LAST, normalized), and its transformers model."""
    directory = tmp_path_factory.mktemp("embedder")
    hf = tiny_hf_model("LlamaForCausalLM")
    hf.model.save_pretrained(directory)
    save_tiny_tokenizer(directory, 1000)
    return directory, hf.model


def test_token_embed_gives_every_tokens_embedding(embedder):
    directory, model = embedder
    engine = _engine(directory)
    engine.embed(_inputs(PROMPTS[3:]), use_tqdm=False)  # its full blocks now in the prefix cache
    hits = engine.stats().prefix_cache_hits
    outputs = engine.encode(_inputs(), pooling_task="token_embed", use_tqdm=False)
    assert engine.stats().prefix_cache_hits == hits  # every token computed
    for prompt, output in zip(PROMPTS, outputs):
        assert output.prompt_token_ids == prompt and output.outputs.data.shape == (len(prompt), 64)
        torch.testing.assert_close(output.outputs.data, F.normalize(_hidden(model, prompt), dim=-1), atol=1e-5, rtol=0)
    [raw] = engine.encode(_inputs(PROMPTS[1:2]), PoolingParams(normalize=False, task="token_embed"), use_tqdm=False)
    torch.testing.assert_close(raw.outputs.data, _hidden(model, PROMPTS[1]), atol=1e-5, rtol=1e-5)
    assert_no_blocks_held(engine)


def test_embed_and_the_engines_own_task_are_embed(embedder):
    directory, _ = embedder
    engine = _engine(directory)
    embedded = [o.outputs.embedding for o in engine.embed(_inputs(), use_tqdm=False)]
    for task in ("embed", None):
        encoded = engine.encode(_inputs(), pooling_task=task, use_tqdm=False)
        assert [o.outputs.data.tolist() for o in encoded] == embedded
    # embed() pools one vector, whatever task its params carry: the same as without a task, in the
    # same batch (alone, the prompt's products may round otherwise than in the batch of all: AVX-512).
    [one] = engine.embed(_inputs(PROMPTS[:1]), PoolingParams(task="token_embed"), use_tqdm=False)
    [alone] = engine.embed(_inputs(PROMPTS[:1]), use_tqdm=False)
    assert one.outputs.embedding == alone.outputs.embedding
    torch.testing.assert_close(torch.tensor(one.outputs.embedding), torch.tensor(embedded[0]), atol=1e-6, rtol=0)


def test_token_classify_and_reward_give_every_tokens_classes(tiny_model_dir):
    directory = tiny_model_dir("LlamaForSequenceClassification", num_labels=3, id2label=LABELS)
    model = tiny_hf_model("LlamaForSequenceClassification", num_labels=3, id2label=LABELS)
    engine = _engine(directory)
    rewards = engine.reward(_inputs(), use_tqdm=False)
    encoded = engine.encode(_inputs(), pooling_task="token_classify", use_tqdm=False)
    raw = engine.encode(_inputs(), PoolingParams(use_activation=False), pooling_task="token_classify", use_tqdm=False)
    classified = engine.classify(_inputs(), use_tqdm=False)
    as_classify = engine.encode(_inputs(), pooling_task="classify", use_tqdm=False)
    for i, prompt in enumerate(PROMPTS):
        logits = _hidden(model.model, prompt) @ model.score.weight.T  # every token's, as the head reads the last
        assert rewards[i].outputs.data.shape == (len(prompt), 3)
        torch.testing.assert_close(rewards[i].outputs.data, logits.softmax(-1), atol=1e-5, rtol=0)
        torch.testing.assert_close(encoded[i].outputs.data, rewards[i].outputs.data, atol=0, rtol=0)
        torch.testing.assert_close(raw[i].outputs.data, logits, atol=1e-5, rtol=1e-5)
        assert as_classify[i].outputs.data.tolist() == pytest.approx(classified[i].outputs.probs, abs=1e-7)
        torch.testing.assert_close(as_classify[i].outputs.data, rewards[i].outputs.data[-1], atol=1e-6, rtol=0)
    assert_no_blocks_held(engine)


def test_a_task_the_model_has_no_head_for_is_a_value_error(embedder, tiny_model_dir):
    embedding = _engine(embedder[0])
    classifier = _engine(tiny_model_dir("LlamaForSequenceClassification", num_labels=3, id2label=LABELS))
    for engine, task, message in [
        (embedding, "token_classify", "task 'token_classify' needs a classifier's checkpoint"),
        (embedding, "classify", "task 'classify' needs a classifier's checkpoint"),
        (classifier, "token_embed", "task 'token_embed': this model is a classifier"),
        (classifier, "embed", "task 'embed': this model is a classifier"),
        (embedding, "tokens", "task must be one of"),
    ]:
        with pytest.raises(ValueError, match=message):
            engine.encode(_inputs(), pooling_task=task, use_tqdm=False)
        assert_no_blocks_held(engine)
    with pytest.raises(ValueError, match="task 'token_embed': this model is a classifier"):
        classifier.add_request("r", {"prompt_token_ids": [1, 2]}, PoolingParams(task="token_embed"))
    with pytest.raises(ValueError, match="needs a classifier's checkpoint"):
        embedding.reward(_inputs(), use_tqdm=False)


def test_a_chunk_computed_again_is_kept_once_per_token():
    """After a preemption a prompt is computed again from its start: each token's row is its own once."""
    hidden = torch.randn(10, 8)
    state = PooledState(PoolerConfig("LAST", False), PoolingParams(task="token_embed"), 10)
    state.add(hidden[:4], 0)
    state.add(hidden[:6] + 1, 0)  # recomputed (here, to different values: the later ones stay), two rows further
    assert state.embedding is None
    state.add(hidden[6:], 6)
    torch.testing.assert_close(state.embedding, torch.cat([hidden[:6] + 1, hidden[6:]]))
