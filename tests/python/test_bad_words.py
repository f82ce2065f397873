"""bad_words (vLLM's SamplingParams field): the words' token sequences, the tokens a step masks,
and the engine's greedy ids against transformers' generate(bad_words_ids=...) on the same weights."""

from __future__ import annotations

import pytest
import torch

from kvserve import Engine, SamplingParams
from kvserve.bad_words import bad_words_token_ids, banned_next
from kvserve.sampling_metadata import SamplingMetadata
from tiny_models import tiny_hf_model

GREEDY = dict(temperature=0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Engine(str(tiny_model_dir("LlamaForCausalLM")), dtype="float32", kv_cache_memory_gb=0.01)


def free_ids(engine: Engine, prompt: str) -> list[int]:
    [output] = engine.generate([prompt], SamplingParams(**GREEDY), use_tqdm=False)
    return output.outputs[0].token_ids


def test_a_word_is_read_at_the_start_and_after_a_space_where_the_space_joins_it(engine):
    tokenizer = engine.tokenizer
    for word in ("ing", "the", "capital", "some more", "  Paris"):
        bare = tokenizer.encode(word.lstrip(), add_special_tokens=False)
        spaced = tokenizer.encode(" " + word.lstrip(), add_special_tokens=False)
        expected = [bare] + ([spaced] if spaced[0] != bare[0] and len(spaced) == len(bare) else [])
        assert bad_words_token_ids([word], tokenizer) == expected
    # Both readings in this byte-level tokenizer: one token each, the second with the space in it.
    assert len(bad_words_token_ids(["ing"], tokenizer)) == 2


def test_a_words_last_token_is_banned_where_the_output_ends_with_the_rest():
    sequences = [[5], [1, 2, 3], [7, 3]]
    assert banned_next(sequences, []) == [5]
    assert banned_next(sequences, [9, 1, 2]) == [5, 3]
    assert banned_next(sequences, [1, 2, 4]) == [5]
    assert banned_next(sequences, [2, 7]) == [5, 3]
    metadata = SamplingMetadata.from_requests(
        [SamplingParams(), SamplingParams(), SamplingParams(min_tokens=3)], [[1, 2], [4], [7]], [[0]] * 3,
        [None] * 3, vocab_size=16, eos_token_ids=[2], bad_words=[sequences, [], [[7, 8]]])
    rows, tokens = metadata.banned
    assert sorted(zip(rows.tolist(), tokens.tolist())) == [(0, 3), (0, 5), (2, 2), (2, 8)]
    assert not metadata.argmax_only
    assert SamplingMetadata.from_requests([SamplingParams()], [[1]], [[0]], [None], vocab_size=16,
                                          bad_words=[[]]).banned is None


def test_one_token_words_give_transformers_ids(engine):
    """transformers bans a sequence's last token where the whole text ends with the rest; kvserve
    (as vLLM) where the output does: for one-token words the two agree, token for token."""
    prompt = "The capital of France is"
    free = free_ids(engine, prompt)
    tokenizer = engine.tokenizer
    words = [w for w in (tokenizer.decode([t]).strip() for t in free) if w and "\ufffd" not in w
             and all(len(s) == 1 for s in bad_words_token_ids([w], tokenizer))][:2]
    assert len(words) == 2, "the free output holds two one-token words to ban"
    banned = bad_words_token_ids(words, tokenizer)
    [output] = engine.generate([prompt], SamplingParams(**GREEDY, bad_words=words), use_tqdm=False)
    ids = output.outputs[0].token_ids
    assert ids != free and not {s[0] for s in banned} & set(ids)
    hf = tiny_hf_model("LlamaForCausalLM")
    prompt_ids = torch.tensor([output.prompt_token_ids])
    expected = hf.generate(prompt_ids, max_new_tokens=GREEDY["max_tokens"], do_sample=False, eos_token_id=None,
                           pad_token_id=0, bad_words_ids=banned)[0, prompt_ids.shape[1]:].tolist()
    assert ids == expected


def test_a_longer_word_is_cut_where_it_would_end_and_nowhere_else(engine):
    prompt = "Hi"
    free = free_ids(engine, prompt)
    tokenizer = engine.tokenizer
    found = [(i, tokenizer.decode(free[i:i + 2])) for i in range(len(free) - 1)
             if free[i:i + 2] in bad_words_token_ids([tokenizer.decode(free[i:i + 2])], tokenizer)]
    assert found, "the free output holds a two-token word"
    at, word = found[0]
    [output] = engine.generate([prompt], SamplingParams(**GREEDY, bad_words=[word]), use_tqdm=False)
    ids = output.outputs[0].token_ids
    assert ids[:at + 1] == free[:at + 1] and ids[at + 1] != free[at + 1]  # the same until its last token
    for sequence in bad_words_token_ids([word], tokenizer):
        assert all(ids[i:i + len(sequence)] != sequence for i in range(len(ids)))
    seeded = SamplingParams(temperature=1.0, seed=3, max_tokens=24, ignore_eos=True, bad_words=[word])
    [sampled] = engine.generate([prompt], seeded, use_tqdm=False)
    sampled_ids = sampled.outputs[0].token_ids
    assert all(sampled_ids[i:i + 2] != free[at:at + 2] for i in range(len(sampled_ids)))


def test_bad_words_must_be_words(engine, tiny_model_dir):
    assert SamplingParams(bad_words="lock").bad_words == ["lock"]
    for bad in ([""], [" \n"], [3], 3):
        with pytest.raises(ValueError, match="bad_words must be a list of words"):
            SamplingParams(bad_words=bad)
    no_tokenizer = Engine(str(tiny_model_dir("LlamaForCausalLM")), dtype="float32", kv_cache_memory_gb=0.01,
                          skip_tokenizer_init=True)
    with pytest.raises(ValueError, match="bad_words .* need the tokenizer"):
        no_tokenizer.generate([{"prompt_token_ids": [1, 2]}], SamplingParams(bad_words=["lock"]), use_tqdm=False)
