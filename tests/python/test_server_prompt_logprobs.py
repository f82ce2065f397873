"""vLLM's prompt_logprobs on a real server (tiny Llama, float32) through the `openai` package: each
prompt token's log-probability and its k likeliest, equal to the offline Engine's; beside echo's
own count; refused with stream."""

from __future__ import annotations

import openai
import pytest

from kvserve import SamplingParams

MODEL = "tiny"
PROMPT = "The capital of France is"


def offline_entries(engine, prompt_ids: list[int], k: int):
    [output] = engine.generate([{"prompt_token_ids": prompt_ids}], SamplingParams(max_tokens=1, prompt_logprobs=k),
                               use_tqdm=False)
    return output.prompt_logprobs


def assert_matches(served: list, prompt_ids: list[int], expected, k: int):
    assert served[0] is None and len(served) == len(prompt_ids)
    for token_id, got, entry in zip(prompt_ids[1:], served[1:], expected[1:]):
        likeliest = {t for t, e in entry.items() if e.rank <= k}
        assert set(got) == {str(t) for t in likeliest | {token_id}}
        for key, value in got.items():
            reference = entry[int(key)]
            assert value["logprob"] == pytest.approx(reference.logprob, abs=1e-4)
            assert value["rank"] == reference.rank and value["decoded_token"] == reference.decoded_token


def test_completions_prompt_logprobs_equal_the_offline_engines(tiny_client, tiny_engine):
    prompt_ids = tiny_engine.tokenizer.encode(PROMPT)
    expected = offline_entries(tiny_engine, prompt_ids, 3)
    response = tiny_client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, n=2,
                                              extra_body={"prompt_logprobs": 3})
    for choice in response.choices:
        assert_matches(choice.prompt_logprobs, prompt_ids, expected, 3)


def test_echo_keeps_its_own_count_beside_more_prompt_logprobs(tiny_client, tiny_engine):
    prompt_ids = tiny_engine.tokenizer.encode(PROMPT)
    response = tiny_client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=1, echo=True, logprobs=1,
                                              extra_body={"prompt_logprobs": 4})
    [choice] = response.choices
    echoed = choice.logprobs.top_logprobs[1:len(prompt_ids)]
    assert all(1 <= len(top) <= 2 for top in echoed)  # the token and its likeliest one
    assert_matches(choice.prompt_logprobs, prompt_ids, offline_entries(tiny_engine, prompt_ids, 4), 4)


def test_chat_prompt_logprobs_sit_beside_the_choices(tiny_client, tiny_engine):
    response = tiny_client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                                   max_tokens=2, extra_body={"prompt_logprobs": 0,
                                                                             "return_token_ids": True})
    prompt_ids = response.prompt_token_ids
    assert_matches(response.prompt_logprobs, prompt_ids, offline_entries(tiny_engine, prompt_ids, 0), 0)
    assert all(len(entry) == 1 for entry in response.prompt_logprobs[1:])  # k = 0: the token's own alone


@pytest.mark.parametrize("fields, message", [
    ({"stream": True}, "prompt_logprobs are not available with stream: true"),
    ({"prompt_logprobs": 21}, "prompt_logprobs 21 asks for 21 log-probabilities"),
])
def test_what_prompt_logprobs_refuse(tiny_client, fields, message):
    fields = {"prompt_logprobs": 2, **fields}
    stream = fields.pop("stream", False)
    with pytest.raises(openai.BadRequestError) as raised:
        tiny_client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, stream=stream, extra_body=fields)
    assert message in raised.value.body["message"] and raised.value.body["param"] == "prompt_logprobs"
