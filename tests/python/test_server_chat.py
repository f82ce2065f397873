"""POST /v1/chat/completions on a real server (tiny Llama with a ChatML template, float32) through the
`openai` package, checked against the offline Engine's chat() on the same weights."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from kvserve import Engine, SamplingParams

MODEL = "tiny"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]
GREEDY = dict(temperature=0, max_tokens=10, ignore_eos=True)


def offline_chat(engine: Engine, messages, **params):
    template = {k: params.pop(k) for k in ("add_generation_prompt", "continue_final_message") if k in params}
    [output] = engine.chat(messages, SamplingParams(**params), use_tqdm=False, **template)
    return output


def chat(client, messages=MESSAGES, **params):
    standard = {"max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stop", "seed", "logprobs",
                "top_logprobs", "presence_penalty", "frequency_penalty", "stream", "stream_options"}
    extra = {k: params.pop(k) for k in list(params) if k not in standard}
    return client.chat.completions.create(model=MODEL, messages=messages, extra_body=extra or None, **params)


def test_allowed_token_ids_and_truncate_prompt_tokens(tiny_client, tiny_engine):
    allowed = tiny_engine.tokenizer.encode(" Paris is France")
    reference = offline_chat(tiny_engine, MESSAGES, **GREEDY, allowed_token_ids=allowed).outputs[0]
    response = chat(tiny_client, **GREEDY, allowed_token_ids=allowed)
    assert set(reference.token_ids) <= set(allowed)
    assert response.choices[0].message.content == reference.text
    cut = offline_chat(tiny_engine, MESSAGES, **GREEDY, truncate_prompt_tokens=4)
    response = chat(tiny_client, **GREEDY, truncate_prompt_tokens=4)
    assert len(cut.prompt_token_ids) == 4 and response.usage.prompt_tokens == 4
    assert response.choices[0].message.content == cut.outputs[0].text


def test_greedy_reply_and_usage_equal_the_offline_engine(tiny_client, tiny_engine):
    reference = offline_chat(tiny_engine, MESSAGES, **GREEDY)
    response = chat(tiny_client, **GREEDY)
    [choice] = response.choices
    assert choice.message.role == "assistant" and choice.message.content == reference.outputs[0].text
    assert choice.finish_reason == "length" and response.object == "chat.completion"
    assert response.id.startswith("chatcmpl-") and response.model == MODEL
    assert response.usage.prompt_tokens == len(reference.prompt_token_ids)
    assert response.usage.completion_tokens == 10 and response.usage.total_tokens == response.usage.prompt_tokens + 10


def test_text_parts_and_developer_role_read_like_plain_messages(tiny_client):
    parts = [{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
             {"role": "user", "content": [{"type": "text", "text": "What is the capital"},
                                          {"type": "text", "text": "of France?"}]}]
    joined = [MESSAGES[0], {"role": "user", "content": "What is the capital\nof France?"}]
    assert chat(tiny_client, parts, **GREEDY).choices[0].message.content == \
        chat(tiny_client, joined, **GREEDY).choices[0].message.content


def test_max_completion_tokens_wins_over_max_tokens(tiny_client):
    response = chat(tiny_client, temperature=0, max_tokens=3, max_completion_tokens=6, ignore_eos=True)
    assert response.usage.completion_tokens == 6 and response.choices[0].finish_reason == "length"


def test_continue_final_message_and_add_generation_prompt(tiny_client, tiny_engine):
    messages = MESSAGES + [{"role": "assistant", "content": "The capital is"}]
    template = dict(add_generation_prompt=False, continue_final_message=True)
    reference = offline_chat(tiny_engine, messages, **GREEDY, **template)
    response = chat(tiny_client, messages, **GREEDY, **template)
    assert response.choices[0].message.content == reference.outputs[0].text
    assert response.usage.prompt_tokens == len(reference.prompt_token_ids)
    plain = offline_chat(tiny_engine, MESSAGES, **GREEDY, add_generation_prompt=False)
    assert chat(tiny_client, **GREEDY, add_generation_prompt=False).choices[0].message.content == plain.outputs[0].text


def test_chat_template_kwargs_win_over_the_requests_fields(tiny_client, tiny_server, tiny_engine):
    """vLLM merges chat_template_kwargs over add_generation_prompt / continue_final_message."""
    plain = offline_chat(tiny_engine, MESSAGES, **GREEDY, add_generation_prompt=False)
    response = chat(tiny_client, **GREEDY, add_generation_prompt=True,
                    chat_template_kwargs={"add_generation_prompt": False})
    assert response.choices[0].message.content == plain.outputs[0].text
    assert response.usage.prompt_tokens == len(plain.prompt_token_ids)
    # apply_chat_template's own arguments, not template variables: the prompt must stay text.
    for name in ("tokenize", "return_dict"):
        response = httpx.post(tiny_server.url + "/v1/chat/completions",
                              json={"model": MODEL, "messages": MESSAGES, **GREEDY, "chat_template_kwargs": {name: True}})
        assert response.status_code == 400 and f"chat_template_kwargs cannot set ['{name}']" in response.json()["error"]["message"]


def test_nulls_mean_defaults_and_null_content_is_empty_text(tiny_client, tiny_server, tiny_engine):
    """Clients that write out every field send null for the ones they leave unset; an assistant's
    tool-call turn has no content."""
    reference = chat(tiny_client, **GREEDY)
    nulls = dict.fromkeys(["n", "presence_penalty", "frequency_penalty", "stream", "logprobs", "stream_options",
                           "add_generation_prompt", "min_tokens", "skip_special_tokens", "chat_template_kwargs"])
    response = httpx.post(tiny_server.url + "/v1/chat/completions",
                          json={"model": MODEL, "messages": MESSAGES, **GREEDY, **nulls})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == reference.choices[0].message.content
    with_null = MESSAGES + [{"role": "assistant", "content": None}, {"role": "user", "content": "And Spain?"}]
    with_empty = MESSAGES + [{"role": "assistant", "content": ""}, {"role": "user", "content": "And Spain?"}]
    assert chat(tiny_client, with_null, **GREEDY).choices[0].message.content == \
        offline_chat(tiny_engine, with_empty, **GREEDY).outputs[0].text


def test_sampling_parameters_reach_the_engine(tiny_client, tiny_engine):
    params = dict(temperature=1.0, top_p=0.8, seed=11, max_tokens=10, ignore_eos=True, frequency_penalty=1.0,
                  presence_penalty=0.5, top_k=20, repetition_penalty=1.3, n=2)
    reference = offline_chat(tiny_engine, MESSAGES, **params)
    response = chat(tiny_client, **params)
    assert [c.message.content for c in response.choices] == [o.text for o in reference.outputs]
    free = reference.outputs[0].text
    stop = free[3:5]
    stopped = chat(tiny_client, **{**params, "n": 1, "stop": stop}).choices[0]
    assert stopped.message.content == free[:free.index(stop)] and stopped.finish_reason == "stop"


def test_logprobs_and_top_logprobs(tiny_client, tiny_engine):
    reference = offline_chat(tiny_engine, MESSAGES, **GREEDY, logprobs=2).outputs[0]
    [choice] = chat(tiny_client, **GREEDY, logprobs=True, top_logprobs=2).choices
    content = choice.logprobs.content
    assert [c.token for c in content] == [tiny_engine.tokenizer.decode([t]) for t in reference.token_ids]
    assert [c.logprob for c in content] == pytest.approx(
        [e[t].logprob for e, t in zip(reference.logprobs, reference.token_ids)], rel=1e-4, abs=1e-5)
    for entry in content:
        assert entry.bytes == list(entry.token.encode("utf-8"))
        assert len(entry.top_logprobs) == 2 and entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)  # greedy takes the most likely
    assert chat(tiny_client, **GREEDY, logprobs=True).choices[0].logprobs.content[0].top_logprobs == []
    assert chat(tiny_client, **GREEDY).choices[0].logprobs is None


def test_stream_opens_with_the_role_and_ends_with_usage(tiny_client, tiny_engine):
    reference = offline_chat(tiny_engine, MESSAGES, **GREEDY)
    chunks = list(chat(tiny_client, **GREEDY, stream=True, stream_options={"include_usage": True}))
    first, *middle, last = chunks
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    assert first.object == "chat.completion.chunk"
    assert "".join(c.choices[0].delta.content or "" for c in middle) == reference.outputs[0].text
    assert middle[-1].choices[0].finish_reason == "length"
    assert last.choices == [] and last.usage.completion_tokens == 10
    assert last.usage.prompt_tokens == len(reference.prompt_token_ids)


def test_async_stream_with_several_choices(tiny_server, tiny_engine):
    params = dict(temperature=1.0, top_p=1.0, seed=5, max_tokens=8, ignore_eos=True, n=3)
    reference = offline_chat(tiny_engine, MESSAGES, **params)

    async def run():
        tiny_client = openai.AsyncOpenAI(base_url=tiny_server.url + "/v1", api_key="unused")
        texts, roles = ["", "", ""], set()
        stream = await tiny_client.chat.completions.create(
            model=MODEL, messages=MESSAGES, n=3, stream=True, temperature=1.0, top_p=1.0, seed=5, max_tokens=8,
            extra_body={"ignore_eos": True})
        async for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.role:
                    roles.add(choice.index)
                texts[choice.index] += choice.delta.content or ""
        reply = await tiny_client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0, max_tokens=10,
                                                     extra_body={"ignore_eos": True})
        await tiny_client.close()
        return texts, roles, reply

    texts, roles, reply = asyncio.run(run())
    assert texts == [o.text for o in reference.outputs] and roles == {0, 1, 2}
    assert reply.choices[0].message.content == offline_chat(tiny_engine, MESSAGES, **GREEDY).outputs[0].text
