"""The ShareGPT dataset as vLLM samples it: conversations shuffled with the seed, then vLLM's length
filter (prompt and reply of 4+ tokens, prompt <= 1024, both <= 2048), plus max_model_len."""

import random

import pytest

from kvserve.bench.sharegpt import sharegpt_requests
from kvserve.bench.tokenizer import save_tokenizer
from kvserve.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(directory, 500, model_max_length=4096)
    return Tokenizer.from_pretrained(directory)  # no BOS: a prompt's length is its text's tokens


def chat(prompt, reply, *more):
    turns = [prompt, reply, *more]
    return {"conversations": [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(turns)]}


def sized(tokenizer, num_tokens):
    """A text of exactly num_tokens tokens (each ' q' stays one token: no merge makes 'qq')."""
    text = " q" * num_tokens
    assert len(tokenizer.encode(text)) == num_tokens
    return text


def test_order_is_vllms_seeded_shuffle(tokenizer):
    entries = [chat(f"question number {i} about the sea", f"answer number {i} about the sea") for i in range(20)]
    entries.insert(5, {"conversations": [{"from": "human", "value": "a single turn is never used"}]})
    requests = sharegpt_requests(entries, 20, tokenizer, None, 4096, seed=3)
    # vLLM: keep the entries of 2+ turns, random.seed(seed), random.shuffle, then take in order.
    expected = [e for e in entries if len(e["conversations"]) >= 2]
    random.seed(3)
    random.shuffle(expected)
    assert [r.prompt_text for r in requests] == [e["conversations"][0]["value"] for e in expected]
    assert [r.prompt_token_ids for r in requests] == [tokenizer.encode(r.prompt_text) for r in requests]
    assert requests != sharegpt_requests(entries, 20, tokenizer, None, 4096, seed=4)
    assert requests[:5] == sharegpt_requests(entries, 5, tokenizer, None, 4096, seed=3)


@pytest.mark.parametrize("prompt_len, reply_len, fixed_output_len, max_model_len, used", [
    (4, 4, None, 4096, True),
    (3, 4, None, 4096, False),  # prompt under 4 tokens
    (4, 3, None, 4096, False),  # reply under 4 tokens
    (4, 3, 8, 4096, True),  # ... unless the output length is fixed (vLLM skips that check then)
    (1024, 4, None, 4096, True),
    (1025, 4, None, 4096, False),  # prompt over 1024
    (1000, 1048, None, 4096, True),
    (1000, 1049, None, 4096, False),  # prompt + reply over 2048
    (100, 100, None, 199, False),  # no room in the served model's max_model_len
])
def test_vllms_length_filter(tokenizer, prompt_len, reply_len, fixed_output_len, max_model_len, used):
    probe = chat(sized(tokenizer, prompt_len), sized(tokenizer, reply_len))
    filler = chat(sized(tokenizer, 8), sized(tokenizer, 8))
    requests = sharegpt_requests([probe, filler], 1 + used, tokenizer, fixed_output_len, max_model_len)
    assert any(r.prompt_len == prompt_len for r in requests) == used
    if not used:
        with pytest.raises(ValueError, match="1 usable conversations .* fewer than --num-prompts 2"):
            sharegpt_requests([probe, filler], 2, tokenizer, fixed_output_len, max_model_len)
