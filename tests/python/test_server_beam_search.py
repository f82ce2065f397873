"""vLLM's use_beam_search on a real server (tiny Llama, float32) through the `openai` package: the
choices are the offline Engine.beam_search's beams on the same weights, in completions and chat,
streamed or not; what beam search cannot follow is a 400; a client gone mid-search leaves no KV
block held."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from kvserve import BeamSearchParams

MODEL = "tiny"
PROMPT = "The capital of France is"


def beams(engine, prompt_ids: list[int], width: int, max_tokens: int, **params):
    [output] = engine.beam_search([{"prompt_token_ids": prompt_ids}], BeamSearchParams(width, max_tokens, **params))
    return [beam.tokens[len(prompt_ids):] for beam in output.sequences], output.sequences


def test_completions_choices_are_the_offline_beams(tiny_client, tiny_engine):
    prompt_ids = tiny_engine.tokenizer.encode(PROMPT)
    expected, sequences = beams(tiny_engine, prompt_ids, 3, 6)
    response = tiny_client.completions.create(model=MODEL, prompt=PROMPT, n=3, max_tokens=6, logprobs=2,
                                              extra_body={"use_beam_search": True, "return_token_ids": True})
    assert [choice.token_ids for choice in response.choices] == expected
    for choice, beam, own in zip(response.choices, sequences, expected):
        stopped = beam.finish_reason == "stop"
        assert choice.finish_reason == beam.finish_reason
        assert choice.text == tiny_engine.tokenizer.decode(own[:-1] if stopped else own, skip_special_tokens=True)
        # Each token's entry: the token and the 2 likeliest of its step's candidates.
        assert all(len(top) <= 3 for top in choice.logprobs.top_logprobs)
        assert sum(choice.logprobs.token_logprobs) == pytest.approx(beam.cum_logprob, abs=1e-4)
    assert response.usage.completion_tokens == sum(map(len, expected))


def test_chat_streamed_and_whole_give_the_same_beams(tiny_server, tiny_client):
    messages = [{"role": "user", "content": "Name a colour."}]
    extra = {"use_beam_search": True, "length_penalty": 0.5}
    whole = tiny_client.chat.completions.create(model=MODEL, messages=messages, n=2, max_tokens=5, extra_body=extra)
    streamed = ["", ""]
    for chunk in tiny_client.chat.completions.create(model=MODEL, messages=messages, n=2, max_tokens=5,
                                                     extra_body=extra, stream=True):
        for choice in chunk.choices:
            streamed[choice.index] += choice.delta.content or ""
    assert streamed == [choice.message.content for choice in whole.choices]
    assert len(set(streamed)) == 2  # two beams, not one answer twice


@pytest.mark.parametrize("fields, named", [
    ({"top_p": 0.5}, "top_p"),
    ({"stop": ["."]}, "stop"),
    ({"seed": 3, "presence_penalty": 1.0}, "seed, presence_penalty"),
    ({"structured_outputs": {"choice": ["a", "b"]}}, "structured_outputs"),
])
def test_what_beam_search_does_not_follow_is_a_400(tiny_client, fields, named):
    with pytest.raises(openai.BadRequestError) as raised:
        tiny_client.completions.create(model=MODEL, prompt=PROMPT, n=2, max_tokens=3,
                                       extra_body={"use_beam_search": True, **fields})
    error = raised.value.body
    assert error["param"] == "use_beam_search" and f"does not follow {named}:" in error["message"]


def test_echo_of_the_prompt_alone_has_nothing_to_search(tiny_client):
    with pytest.raises(openai.BadRequestError, match="max_tokens 0"):
        tiny_client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=0, echo=True,
                                       extra_body={"use_beam_search": True})


def test_a_client_gone_mid_search_leaves_no_block_held(tiny_server, tiny_client):
    # 200 steps of 8 beams: about 0.5 s on a 2-core AVX-512 machine (4 beams took 0.3 s, within the
    # half second this client once waited), the client gone after 0.1 s.
    async def leave_early():
        try:
            async with httpx.AsyncClient(timeout=0.1) as client:
                await client.post(tiny_server.url + "/v1/completions",
                                  json={"model": MODEL, "prompt": PROMPT, "n": 8, "max_tokens": 200,
                                        "use_beam_search": True, "ignore_eos": True})
        except httpx.TimeoutException:
            return
        raise AssertionError("the search should outlast the client's tenth of a second")

    def requests_ended() -> float:
        return sum(tiny_server.metric("kvserve:request_success_total", finished_reason=reason)
                   for reason in ("stop", "length", "abort"))

    before = requests_ended()
    asyncio.run(leave_early())
    deadline = time.monotonic() + 30
    while tiny_server.metric("kvserve:kv_cache_usage_perc") != 0.0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert tiny_server.metric("kvserve:kv_cache_usage_perc") == 0.0
    # The search stopped with its client (its step aborted, or the next one never submitted): no
    # more of its 200 steps of 8 beams end after it.
    ended = requests_ended()
    time.sleep(0.5)
    assert requests_ended() == ended < before + 200 * 8
    answer = tiny_client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2)
    assert answer.usage.completion_tokens == 2
