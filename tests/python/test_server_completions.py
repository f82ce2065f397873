"""POST /v1/completions on a real server (tiny Llama, float32) through the `openai` package: every
answer is checked against the offline Engine on the same weights (greedy, or seeded sampling, which
gives the same tokens whatever else is batched)."""

from __future__ import annotations

import asyncio

import openai
import pytest

from kvserve import Engine, SamplingParams

MODEL = "tiny"
PROMPT = "The capital of France is"
SEEDED = dict(temperature=1.0, top_p=1.0, seed=7, max_tokens=12, ignore_eos=True)


def offline(engine: Engine, prompt, **params):
    """The offline Engine's output for one prompt (a string or token ids)."""
    prompt = {"prompt_token_ids": prompt} if isinstance(prompt, list) else prompt
    [output] = engine.generate([prompt], SamplingParams(**params), use_tqdm=False)
    return output


def complete(client, prompt=PROMPT, **params):
    """A completion with the vLLM-only parameters sent as extra_body, as a vLLM user sends them."""
    standard = {"max_tokens", "temperature", "top_p", "n", "stop", "seed", "presence_penalty", "frequency_penalty",
                "logit_bias", "logprobs", "echo", "stream", "stream_options", "user"}
    extra = {k: params.pop(k) for k in list(params) if k not in standard}
    return client.completions.create(model=MODEL, prompt=prompt, extra_body=extra or None, **params)


def test_greedy_text_and_usage_equal_the_offline_engine(tiny_client, tiny_engine):
    reference = offline(tiny_engine, PROMPT, temperature=0, max_tokens=10, ignore_eos=True).outputs[0]
    response = complete(tiny_client, temperature=0, max_tokens=10, ignore_eos=True)
    [choice] = response.choices
    assert choice.text == reference.text and choice.finish_reason == "length" and choice.index == 0
    assert response.object == "text_completion" and response.model == MODEL and response.id.startswith("cmpl-")
    assert response.usage.prompt_tokens_details is None  # only with --enable-prompt-tokens-details
    prompt_len = len(tiny_engine.tokenizer.encode(PROMPT))
    assert (response.usage.prompt_tokens, response.usage.completion_tokens, response.usage.total_tokens) == (
        prompt_len, 10, prompt_len + 10)


VARIANTS = {
    "top_p": dict(top_p=0.3),
    "top_k": dict(top_k=3),
    "min_p": dict(min_p=0.3),
    "presence_penalty": dict(presence_penalty=2.0),
    "frequency_penalty": dict(frequency_penalty=2.0),
    "repetition_penalty": dict(repetition_penalty=3.0),
    "bad_words": dict(bad_words=["ji"]),  # a one-token word of the seeded output
    # End-of-sequence (id 2) pushed to the top: the output ends at once, unless min_tokens holds it back.
    "min_tokens": dict(min_tokens=5, ignore_eos=False, temperature=0.0, logit_bias={2: 100.0}),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_each_sampling_parameter_reaches_the_engine(tiny_client, tiny_engine, name):
    params = {**SEEDED, **VARIANTS[name]}
    reference = offline(tiny_engine, PROMPT, **params).outputs[0]
    if name == "min_tokens":
        base = offline(tiny_engine, PROMPT, **{**params, "min_tokens": 0}).outputs[0]
    else:
        base = offline(tiny_engine, PROMPT, **SEEDED).outputs[0]
    assert reference.token_ids != base.token_ids, f"{name} does not change this output: pick another value"
    if "logit_bias" in params:
        params["logit_bias"] = {str(k): v for k, v in params["logit_bias"].items()}
    [choice] = complete(tiny_client, **params).choices
    assert choice.text == reference.text


def test_default_sampling_comes_from_generation_config(tiny_client, tiny_engine):
    # The tiny model's generation_config.json: temperature 0.7, top_p 0.9.
    reference = offline(tiny_engine, PROMPT, temperature=0.7, top_p=0.9, seed=3, max_tokens=12, ignore_eos=True)
    [choice] = complete(tiny_client, seed=3, max_tokens=12, ignore_eos=True).choices
    assert choice.text == reference.outputs[0].text


def test_logit_bias_forces_a_token(tiny_client, tiny_engine):
    token_id = tiny_engine.tokenizer.encode(" ka")[0]
    response = complete(tiny_client, temperature=0, max_tokens=4, ignore_eos=True, logit_bias={str(token_id): 100})
    assert response.choices[0].text == tiny_engine.tokenizer.decode([token_id] * 4)


def test_allowed_token_ids_and_truncate_prompt_tokens(tiny_client, tiny_engine):
    allowed = tiny_engine.tokenizer.encode(" ka lo mi")
    [choice] = complete(tiny_client, temperature=1.0, top_p=1.0, seed=3, max_tokens=8, ignore_eos=True,
                        allowed_token_ids=allowed).choices
    expected = offline(tiny_engine, PROMPT, temperature=1.0, top_p=1.0, seed=3, max_tokens=8, ignore_eos=True,
                       allowed_token_ids=allowed).outputs[0]
    assert set(expected.token_ids) <= set(allowed) and choice.text == expected.text
    # The prompt's last 3 tokens: echoed, counted and generated from as the short prompt.
    ids = tiny_engine.tokenizer.encode(PROMPT)
    greedy = dict(temperature=0, max_tokens=5, ignore_eos=True)
    short = offline(tiny_engine, ids[-3:], **greedy).outputs[0]
    response = complete(tiny_client, PROMPT, echo=True, truncate_prompt_tokens=3, **greedy)
    assert response.choices[0].text == tiny_engine.tokenizer.decode(ids[-3:]) + short.text
    assert response.usage.prompt_tokens == 3


def test_stop_strings_and_stop_token_ids(tiny_client, tiny_engine):
    free = offline(tiny_engine, PROMPT, temperature=0, max_tokens=16, ignore_eos=True).outputs[0]
    stop = free.text[6:9]
    [choice] = complete(tiny_client, temperature=0, max_tokens=16, ignore_eos=True, stop=[stop, "never"]).choices
    assert choice.text == free.text[:free.text.index(stop)] and choice.finish_reason == "stop"
    assert choice.model_extra["stop_reason"] == stop
    stop_id = free.token_ids[4]
    [choice] = complete(tiny_client, temperature=0, max_tokens=16, ignore_eos=True, stop_token_ids=[stop_id],
                        include_stop_str_in_output=True).choices
    assert choice.finish_reason == "stop" and choice.model_extra["stop_reason"] == stop_id
    assert choice.text == tiny_engine.tokenizer.decode(free.token_ids[:free.token_ids.index(stop_id) + 1])


def test_seed_repeats_and_n_samples_differ(tiny_client):
    first = complete(tiny_client, **SEEDED).choices[0].text
    assert complete(tiny_client, **SEEDED).choices[0].text == first
    response = complete(tiny_client, **{**SEEDED, "n": 3}, user="someone")
    assert [c.index for c in response.choices] == [0, 1, 2]
    assert response.choices[0].text == first and len({c.text for c in response.choices}) == 3
    assert response.usage.completion_tokens == 3 * SEEDED["max_tokens"]


def test_every_prompt_form(tiny_client, tiny_engine):
    ids = tiny_engine.tokenizer.encode(PROMPT)
    greedy = dict(temperature=0, max_tokens=5, ignore_eos=True)
    expected = offline(tiny_engine, ids, **greedy).outputs[0].text
    other = offline(tiny_engine, "Hi", **greedy).outputs[0].text
    for prompt in (PROMPT, ids):
        assert complete(tiny_client, prompt, **greedy).choices[0].text == expected
    for prompts in ([PROMPT, "Hi"], [ids, tiny_engine.tokenizer.encode("Hi")]):
        response = complete(tiny_client, prompts, n=2, **greedy)
        assert [(c.index, c.text) for c in response.choices] == [(0, expected), (1, expected), (2, other), (3, other)]
        assert response.usage.prompt_tokens == len(ids) + len(tiny_engine.tokenizer.encode("Hi"))
        assert response.usage.completion_tokens == 4 * 5


def test_echo_and_logprobs(tiny_client, tiny_engine):
    reference = offline(tiny_engine, PROMPT, temperature=0, max_tokens=4, ignore_eos=True, logprobs=3).outputs[0]
    [choice] = complete(tiny_client, temperature=0, max_tokens=4, ignore_eos=True, logprobs=3).choices
    logprobs = choice.logprobs
    assert logprobs.tokens == [tiny_engine.tokenizer.decode([t]) for t in reference.token_ids]
    # Greedy: the chosen token is among the top 3; keyed by text, tokens that decode alike ("�") are one.
    assert [len(top) for top in logprobs.top_logprobs] == [len({e.decoded_token for e in ref.values()})
                                                           for ref in reference.logprobs]
    expected = [e[t].logprob for e, t in zip(reference.logprobs, reference.token_ids)]
    assert logprobs.token_logprobs == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert all(max(top.values()) == pytest.approx(max(e.logprob for e in ref.values()), abs=1e-5)
               for top, ref in zip(logprobs.top_logprobs, reference.logprobs))
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(4)]

    [echoed] = complete(tiny_client, temperature=0, max_tokens=4, ignore_eos=True, logprobs=1, echo=True).choices
    prompt_ids = tiny_engine.tokenizer.encode(PROMPT)
    assert echoed.text == PROMPT + reference.text
    assert len(echoed.logprobs.tokens) == len(prompt_ids) + 4
    assert echoed.logprobs.token_logprobs[0] is None and echoed.logprobs.top_logprobs[0] is None
    prompt_reference = offline(tiny_engine, PROMPT, temperature=0, max_tokens=1, prompt_logprobs=1).prompt_logprobs
    expected_prompt = [entry[t].logprob for entry, t in zip(prompt_reference[1:], prompt_ids[1:])]
    assert echoed.logprobs.token_logprobs[1:len(prompt_ids)] == pytest.approx(expected_prompt, rel=1e-4, abs=1e-5)
    assert echoed.logprobs.token_logprobs[len(prompt_ids):] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    chunks = list(complete(tiny_client, temperature=0, max_tokens=4, ignore_eos=True, echo=True, stream=True))
    assert chunks[0].choices[0].text.startswith(PROMPT)
    assert "".join(c.choices[0].text for c in chunks) == PROMPT + reference.text


def test_echo_with_max_tokens_0_scores_the_prompt_alone(tiny_client, tiny_engine):
    """vLLM's prompt scoring: the prompt and its logprobs, nothing generated (usage says so)."""
    prompt_ids = tiny_engine.tokenizer.encode(PROMPT)
    reference = offline(tiny_engine, PROMPT, temperature=0, max_tokens=1, prompt_logprobs=2).prompt_logprobs
    response = complete(tiny_client, max_tokens=0, echo=True, logprobs=2)
    [choice] = response.choices
    assert choice.text == PROMPT and choice.finish_reason == "length"
    assert len(choice.logprobs.tokens) == len(prompt_ids) and choice.logprobs.token_logprobs[0] is None
    expected = [entry[t].logprob for entry, t in zip(reference[1:], prompt_ids[1:])]
    assert choice.logprobs.token_logprobs[1:] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (len(prompt_ids), 0)
    chunks = list(complete(tiny_client, max_tokens=0, echo=True, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == PROMPT
    assert chunks[-1].usage.completion_tokens == 0
    with pytest.raises(openai.BadRequestError, match="only allowed with echo"):
        complete(tiny_client, max_tokens=0)


def test_streaming_sync_gives_the_same_text_with_usage_last(tiny_client, tiny_engine):
    reference = offline(tiny_engine, PROMPT, temperature=0, max_tokens=12, ignore_eos=True).outputs[0]
    chunks = list(complete(tiny_client, temperature=0, max_tokens=12, ignore_eos=True, stream=True,
                           stream_options={"include_usage": True}))
    *text_chunks, last = chunks
    assert "".join(c.choices[0].text for c in text_chunks) == reference.text
    assert all(c.usage is None for c in text_chunks) and text_chunks[-1].choices[0].finish_reason == "length"
    assert last.choices == [] and last.usage.completion_tokens == 12
    assert len({c.id for c in chunks}) == 1
    no_usage = list(complete(tiny_client, temperature=0, max_tokens=3, ignore_eos=True, stream=True))
    assert all(c.choices for c in no_usage) and len(no_usage) == 3


def test_streaming_async_with_several_choices(tiny_server, tiny_engine):
    reference = offline(tiny_engine, PROMPT, **{**SEEDED, "n": 2})

    async def run():
        tiny_client = openai.AsyncOpenAI(base_url=tiny_server.url + "/v1", api_key="unused")
        texts = ["", ""]
        stream = await tiny_client.completions.create(model=MODEL, prompt=PROMPT, n=2, stream=True,
                                                 stream_options={"include_usage": True}, seed=SEEDED["seed"],
                                                 temperature=1.0, top_p=1.0, max_tokens=SEEDED["max_tokens"],
                                                 extra_body={"ignore_eos": True})
        usage = None
        async for chunk in stream:
            for choice in chunk.choices:
                texts[choice.index] += choice.text
            usage = chunk.usage or usage
        plain = await tiny_client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0)
        await tiny_client.close()
        return texts, usage, plain

    texts, usage, plain = asyncio.run(run())
    assert texts == [o.text for o in reference.outputs]
    assert usage.completion_tokens == 2 * SEEDED["max_tokens"]
    assert plain.usage.completion_tokens <= 3


def test_default_max_tokens_is_16_and_cut_to_the_context(tiny_client, tiny_engine):
    assert complete(tiny_client, temperature=0, ignore_eos=True).usage.completion_tokens == 16
    ids = tiny_engine.tokenizer.encode(PROMPT)
    long_prompt = (ids * 300)[: tiny_engine.max_model_len - 5]
    assert complete(tiny_client, long_prompt, temperature=0, ignore_eos=True).usage.completion_tokens == 5
