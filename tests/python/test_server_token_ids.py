"""vLLM's fields for clients that read tokens, on a real server started with
--enable-force-include-usage, --return-tokens-as-token-ids and --max-logprobs -1: return_token_ids
(completions and chat, whole and streamed), stream_options.continuous_usage_stats, every stream's
usage, logprobs' tokens named "token_id:N", and the whole vocabulary's logprobs. Token ids are
checked against the offline Engine on the same weights."""

from __future__ import annotations

import re

import openai
import pytest

from kvserve import SamplingParams
from server_process import ServerProcess

MODEL = "tiny"
PROMPTS = ["The capital of France is", "One two three"]
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = dict(temperature=0, max_tokens=6, ignore_eos=True)


@pytest.fixture(scope="module")
def client(tiny_model_dir):
    with ServerProcess(tiny_model_dir("LlamaForCausalLM"), "--served-model-name", MODEL,
                       "--enable-force-include-usage", "--return-tokens-as-token-ids", "--max-logprobs",
                       "-1") as server:
        yield openai.OpenAI(base_url=server.url + "/v1", api_key="unused")


@pytest.fixture(scope="module")
def references(tiny_engine):
    """The offline Engine's greedy outputs: for each of PROMPTS, then for MESSAGES."""
    params = SamplingParams(**GREEDY, logprobs=2)
    return [*tiny_engine.generate(PROMPTS, params, use_tqdm=False), *tiny_engine.chat(MESSAGES, params, use_tqdm=False)]


def completions(client, **params):
    params = {"temperature": 0, "max_tokens": GREEDY["max_tokens"], **params}
    return client.completions.create(model=MODEL, prompt=PROMPTS,
                                     extra_body={"ignore_eos": True, **params.pop("extra", {})}, **params)


def chat(client, **params):
    params = {"temperature": 0, "max_tokens": GREEDY["max_tokens"], **params}
    return client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                          extra_body={"ignore_eos": True, **params.pop("extra", {})}, **params)


def test_completions_return_each_choices_prompt_and_output_ids(client, references):
    response = completions(client, extra={"return_token_ids": True})
    for choice, reference in zip(response.choices, references):
        assert choice.model_extra["prompt_token_ids"] == reference.prompt_token_ids
        assert choice.model_extra["token_ids"] == reference.outputs[0].token_ids
    assert "token_ids" not in completions(client).choices[0].model_extra

    prompt_ids, output_ids = {}, {0: [], 1: []}
    for chunk in completions(client, stream=True, extra={"return_token_ids": True}):
        for choice in chunk.choices:
            extra = choice.model_extra
            if "prompt_token_ids" in extra:  # its first chunk only
                assert choice.index not in prompt_ids
                prompt_ids[choice.index] = extra["prompt_token_ids"]
            output_ids[choice.index] += extra["token_ids"]
    assert prompt_ids == {i: r.prompt_token_ids for i, r in enumerate(references[:2])}
    assert output_ids == {i: r.outputs[0].token_ids for i, r in enumerate(references[:2])}


def test_chat_returns_the_prompt_ids_once_and_each_chunks_output_ids(client, references):
    reference = references[2]
    response = chat(client, extra={"return_token_ids": True})
    assert response.model_extra["prompt_token_ids"] == reference.prompt_token_ids
    assert response.choices[0].model_extra["token_ids"] == reference.outputs[0].token_ids

    chunks = list(chat(client, stream=True, extra={"return_token_ids": True}))
    assert chunks[0].model_extra["prompt_token_ids"] == reference.prompt_token_ids
    assert all("prompt_token_ids" not in c.model_extra for c in chunks[1:])
    content = [c.choices[0] for c in chunks if c.choices and c.choices[0].delta.role is None]
    assert [t for c in content for t in c.model_extra["token_ids"]] == reference.outputs[0].token_ids
    assert all("token_ids" not in c.choices[0].model_extra for c in chat(client, stream=True) if c.choices)


def test_continuous_usage_stats_count_each_choice_as_it_goes(client, references):
    chunks = list(completions(client, stream=True, stream_options={"include_usage": True,
                                                                   "continuous_usage_stats": True}))
    made = {0: 0, 1: 0}
    for chunk in chunks[:-1]:
        [choice] = chunk.choices
        made[choice.index] += 1  # one token a chunk: greedy, no stop strings
        prompt_tokens = len(references[choice.index].prompt_token_ids)
        assert (chunk.usage.prompt_tokens, chunk.usage.completion_tokens, chunk.usage.total_tokens) == (
            prompt_tokens, made[choice.index], prompt_tokens + made[choice.index])
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == 2 * GREEDY["max_tokens"]
    assert last.usage.prompt_tokens == sum(len(r.prompt_token_ids) for r in references[:2])


def test_the_server_ends_every_stream_with_usage(client):
    """--enable-force-include-usage: usage whether or not the request asked for it."""
    for options in (None, {"include_usage": False}):
        *content, last = completions(client, stream=True, stream_options=options)
        assert all(c.usage is None for c in content) and last.choices == []
        assert last.usage.completion_tokens == 2 * GREEDY["max_tokens"]


def test_logprobs_name_tokens_by_id_unless_the_request_says_otherwise(client, tiny_engine, references):
    """--return-tokens-as-token-ids, and the request's return_tokens_as_token_ids over it."""
    named = re.compile(r"token_id:(\d+)")
    logprobs = completions(client, logprobs=2).choices[0].logprobs
    assert [int(named.fullmatch(t)[1]) for t in logprobs.tokens] == references[0].outputs[0].token_ids
    assert all(named.fullmatch(k) for top in logprobs.top_logprobs for k in top)
    texts = [tiny_engine.tokenizer.decode([t]) for t in references[0].outputs[0].token_ids]
    assert logprobs.text_offset == [sum(map(len, texts[:i])) for i in range(len(texts))]  # offsets count the text
    as_text = completions(client, logprobs=2, extra={"return_tokens_as_token_ids": False}).choices[0].logprobs
    assert as_text.tokens == texts

    reference = references[2].outputs[0]
    content = chat(client, logprobs=True, top_logprobs=2).choices[0].logprobs.content
    assert [c.token for c in content] == [f"token_id:{t}" for t in reference.token_ids]
    assert [c.bytes for c in content] == [list(tiny_engine.tokenizer.decode([t]).encode()) for t in reference.token_ids]
    assert all(named.fullmatch(top.token) for c in content for top in c.top_logprobs)


def test_logprobs_minus_one_give_the_whole_vocabulary(client, tiny_engine):
    vocab = tiny_engine.model_config.vocab_size
    logprobs = completions(client, logprobs=-1, max_tokens=2).choices[0].logprobs
    assert [len(top) for top in logprobs.top_logprobs] == [vocab, vocab]  # names by id: none collide
    content = chat(client, logprobs=True, top_logprobs=-1, max_tokens=2).choices[0].logprobs.content
    assert [len(c.top_logprobs) for c in content] == [vocab, vocab]
