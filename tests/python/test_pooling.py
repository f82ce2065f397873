"""Embeddings (a pooling engine: kvserve.pooling) against Hugging Face transformers on the same random
weights, in float32: the final hidden states (after the model's last norm) of each prompt, pooled
LAST, MEAN or CLS, normalized or not, within 1e-5 of transformers' base model. Prompts cross block
boundaries and are prefilled in chunks; a prompt pooled again meets the prefix cache (LAST)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from kvserve import Engine, PoolingParams, SamplingParams
from kvserve.pooling import PooledState, PoolerConfig
from tiny_models import tiny_hf_model
from tiny_tokenizer import save_tiny_tokenizer

PROMPTS = [[5, 9, 100, 7], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [42], [900 - 37 * i for i in range(17)]]


def _engine(directory, **kwargs) -> Engine:
    return Engine(str(directory), kv_cache_memory_gb=0.05, block_size=4, max_num_batched_tokens=8, **kwargs)


def _base_checkpoint(tmp_path, architecture="LlamaForCausalLM", **config):
    """The tiny model's inner model saved alone (architectures: LlamaModel, as an embedding
    model's checkpoint is), and that model."""
    hf = tiny_hf_model(architecture)
    for key, value in config.items():
        setattr(hf.model.config, key, value)
    hf.model.save_pretrained(tmp_path)
    save_tiny_tokenizer(tmp_path, 1000)
    return hf.model


def _hidden(model, prompt) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([prompt])).last_hidden_state[0]


def _embeddings(engine: Engine, prompts=PROMPTS, params=None) -> list[torch.Tensor]:
    outputs = engine.embed([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    assert [o.prompt_token_ids for o in outputs] == prompts
    return [torch.tensor(o.outputs.embedding) for o in outputs]


@pytest.mark.parametrize("architecture", ["LlamaForCausalLM", "Qwen3ForCausalLM"])
def test_a_base_models_checkpoint_pools_its_last_token_normalized(tmp_path, architecture):
    model = _base_checkpoint(tmp_path, architecture)
    engine = _engine(tmp_path)
    assert engine.pooler == PoolerConfig("LAST", True)
    for prompt, ours in zip(PROMPTS, _embeddings(engine)):
        expected = F.normalize(_hidden(model, prompt)[-1], dim=0)
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    [again] = _embeddings(engine, PROMPTS[3:])
    assert engine.stats().prefix_cache_hits >= 16  # its full blocks, computed by the first call
    torch.testing.assert_close(again, F.normalize(_hidden(model, PROMPTS[3])[-1], dim=0), atol=1e-5, rtol=0)
    assert engine.stats().kv_cache_usage == 0  # every block back


def test_a_causal_checkpoint_pools_with_runner_pooling(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    directory = tiny_model_dir("LlamaForCausalLM")
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval().model
    engine = _engine(directory, runner="pooling", pooler_config={"normalize": False})
    assert engine.runner.model.lm_head is None  # no LM head built: only hidden states
    for prompt, ours in zip(PROMPTS, _embeddings(engine)):
        torch.testing.assert_close(ours, _hidden(model, prompt)[-1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pooling_type", ["MEAN", "CLS"])
def test_mean_and_cls_pool_every_prompt_token(tmp_path, pooling_type):
    model = _base_checkpoint(tmp_path)
    engine = _engine(tmp_path, pooler_config={"pooling_type": pooling_type})
    for prompt, ours in zip(PROMPTS, _embeddings(engine)):
        hidden = _hidden(model, prompt)
        pooled = hidden.mean(0) if pooling_type == "MEAN" else hidden[0]
        torch.testing.assert_close(ours, F.normalize(pooled, dim=0), atol=1e-5, rtol=0)
    _embeddings(engine, PROMPTS[3:])  # pooled again: every token computed again, none from the prefix cache
    assert engine.stats().prefix_cache_hits == 0


def test_the_checkpoints_sentence_transformers_files_choose_the_pooling(tmp_path):
    model = _base_checkpoint(tmp_path)
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True,
                                                                    "pooling_mode_lasttoken": False}))
    (tmp_path / "modules.json").write_text(json.dumps([{"idx": 0, "type": "sentence_transformers.models.Transformer"},
                                                       {"idx": 1, "type": "sentence_transformers.models.Pooling"}]))
    engine = _engine(tmp_path)
    assert engine.pooler == PoolerConfig("MEAN", False)  # no Normalize module
    [ours] = _embeddings(engine, PROMPTS[:1])
    torch.testing.assert_close(ours, _hidden(model, PROMPTS[0]).mean(0), atol=1e-5, rtol=1e-5)


def test_a_request_may_cut_a_matryoshka_models_vectors(tmp_path):
    model = _base_checkpoint(tmp_path, matryoshka_dimensions=[16, 32])
    engine = _engine(tmp_path)
    [short, whole] = _embeddings(engine, PROMPTS[1:2] * 2, [PoolingParams(dimensions=16), PoolingParams()])
    expected = _hidden(model, PROMPTS[1])[-1]
    torch.testing.assert_close(short, F.normalize(expected[:16], dim=0), atol=1e-5, rtol=0)
    assert whole.shape == (64,)
    with pytest.raises(ValueError, match=r"dimensions must be one of \[16, 32\], got 8"):
        engine.embed(["hello"], PoolingParams(dimensions=8), use_tqdm=False)
    [unnormalized] = _embeddings(engine, PROMPTS[1:2], PoolingParams(normalize=False))
    torch.testing.assert_close(unnormalized, expected, atol=1e-5, rtol=1e-5)


def test_what_a_pooling_engine_refuses(tmp_path, tiny_model_dir):
    _base_checkpoint(tmp_path)
    engine = _engine(tmp_path)
    with pytest.raises(ValueError, match="not Matryoshka"):
        engine.embed(["hello"], PoolingParams(dimensions=8), use_tqdm=False)
    with pytest.raises(ValueError, match="use embed"):
        engine.generate(["hello"], SamplingParams(max_tokens=2), use_tqdm=False)
    with pytest.raises(ValueError, match="take PoolingParams"):
        engine.add_request("r", "hello", SamplingParams())
    with pytest.raises(ValueError, match="1 to 255 tokens"):
        engine.embed([{"prompt_token_ids": [1] * 256}], use_tqdm=False)
    [cut] = engine.embed([{"prompt_token_ids": list(range(3, 303))}], PoolingParams(truncate_prompt_tokens=-1),
                         use_tqdm=False)
    assert cut.prompt_token_ids == list(range(48, 303))  # the 255 the context holds with the placeholder
    assert not engine.requests and engine.stats().kv_cache_usage == 0
    with pytest.raises(ValueError, match="base model"):
        Engine(str(tmp_path), runner="generate", kv_cache_memory_gb=0.05)
    generating = _engine(tiny_model_dir("LlamaForCausalLM"))
    with pytest.raises(ValueError, match="needs a pooling engine"):
        generating.embed(["hello"], use_tqdm=False)
    with pytest.raises(ValueError, match="pooling_type must be one of"):
        _engine(tmp_path, pooler_config={"pooling_type": "MAX"})


def test_a_chunk_computed_again_counts_once_in_a_mean():
    """After a preemption a prompt is computed again from its start: its rows join the mean once."""
    hidden = torch.randn(10, 8)
    state = PooledState(PoolerConfig("MEAN", False), PoolingParams(), 10)
    state.add(hidden[:4], 0)
    state.add(hidden[:6], 0)  # recomputed, and two rows further
    state.add(hidden[6:], 6)
    torch.testing.assert_close(state.embedding, hidden.mean(0))


def test_hf_overrides_make_a_model_matryoshka(tmp_path):
    """vLLM's hf_overrides: config.json keys replaced or added (here the flag a Matryoshka
    embedder's config may lack, as Qwen3-Embedding's does)."""
    model = _base_checkpoint(tmp_path)
    engine = _engine(tmp_path, hf_overrides={"is_matryoshka": True, "max_position_embeddings": 64})
    assert engine.max_model_len == 64 and engine.model_config.matryoshka_dimensions == ()
    [short] = _embeddings(engine, PROMPTS[1:2], PoolingParams(dimensions=24))
    torch.testing.assert_close(short, F.normalize(_hidden(model, PROMPTS[1])[-1][:24], dim=0), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="must be a dict"):
        _engine(tmp_path, hf_overrides="is_matryoshka")


def test_score_is_the_cosine_similarity_of_the_embeddings(tmp_path):
    """vLLM's LLM.score for an embedding model: one text against each, or pair by pair."""
    model = _base_checkpoint(tmp_path)
    engine = _engine(tmp_path)
    texts = ["alpha beta", "gamma", "alpha beta gamma delta"]
    hidden = {t: _hidden(model, engine.get_tokenizer().encode(t))[-1] for t in texts}
    one_to_many = engine.score(texts[0], texts, use_tqdm=False)
    expected = [F.cosine_similarity(hidden[texts[0]], hidden[t], dim=0).item() for t in texts]
    assert [o.outputs.score for o in one_to_many] == pytest.approx(expected, abs=1e-5)
    assert one_to_many[0].outputs.score == pytest.approx(1.0, abs=1e-6)
    pairs = engine.score(texts[:2], texts[1:], use_tqdm=False)
    assert pairs[1].outputs.score == pytest.approx(F.cosine_similarity(hidden[texts[1]], hidden[texts[2]], dim=0).item(),
                                                   abs=1e-5)
    with pytest.raises(ValueError, match="expected one first text, or one for each second"):
        engine.score(texts[:2], texts, use_tqdm=False)
