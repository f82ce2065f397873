"""`kvserve serve --speculative-config`: completions and streamed chats through the `openai` client
equal the offline engine's without drafts (greedy), and the server reports its drafts as vLLM does:
the spec_decode counters at /metrics and the SpecDecoding stats line."""

from __future__ import annotations

import json
import re
import time

import openai
import pytest

from kvserve import Engine, SamplingParams
from server_process import ServerProcess

NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3, "prompt_lookup_min": 1}
PROMPTS = ["ka lo mi ne ru sa ti vo", "The capital of France is", "one two three"]
SPEC_LINE = re.compile(r"SpecDecoding metrics: Mean acceptance length: ([\d.]+), Accepted: (\d+) tokens, "
                       r"Drafted: (\d+) tokens, Per-position acceptance rate: ([\d., ]+), "
                       r"Avg Draft acceptance rate: ([\d.]+)%")


@pytest.fixture(scope="module")
def server(repeating_model_dir):
    mp = pytest.MonkeyPatch()
    mp.setenv("KVSERVE_LOG_STATS_INTERVAL", "0.3")
    with ServerProcess(repeating_model_dir, "--served-model-name", "tiny",
                       "--speculative-config", json.dumps(NGRAM)) as server:
        yield server
    mp.undo()


@pytest.fixture(scope="module")
def plain(repeating_model_dir):
    return Engine(str(repeating_model_dir), dtype="float32", kv_cache_memory_gb=0.01, device="cpu")


def test_completions_equal_the_engines_without_drafts(server, plain):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    expected = plain.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True), use_tqdm=False)
    for prompt, want in zip(PROMPTS, expected):
        got = client.completions.create(model="tiny", prompt=prompt, max_tokens=40, temperature=0,
                                        extra_body={"ignore_eos": True, "return_token_ids": True})
        assert got.choices[0].text == want.outputs[0].text
        assert got.choices[0].token_ids == want.outputs[0].token_ids
        assert got.usage.completion_tokens == 40


def test_a_streamed_chat_equals_the_whole_one(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    messages = [{"role": "user", "content": "ka lo mi ka lo mi ka lo"}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=32, temperature=0)
    chunks = client.chat.completions.create(model="tiny", messages=messages, max_tokens=32, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    text, usage = "", None
    for chunk in chunks:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        usage = chunk.usage or usage
    assert text == whole.choices[0].message.content
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_drafts_are_counted_at_metrics_and_in_the_stats_line(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=40, temperature=0,
                              extra_body={"ignore_eos": True})
    samples = server.metrics()
    label = '{model_name="tiny"}'
    drafts = samples["kvserve:spec_decode_num_drafts_total" + label]
    draft_tokens = samples["kvserve:spec_decode_num_draft_tokens_total" + label]
    accepted = samples["kvserve:spec_decode_num_accepted_tokens_total" + label]
    per_pos = [samples[f'kvserve:spec_decode_num_accepted_tokens_per_pos_total{{model_name="tiny",position="{k}"}}']
               for k in range(NGRAM["num_speculative_tokens"])]
    assert 0 < accepted < draft_tokens <= NGRAM["num_speculative_tokens"] * drafts
    assert sum(per_pos) == accepted and per_pos == sorted(per_pos, reverse=True)

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(SPEC_LINE.search(line) for line in list(server.log)):
        time.sleep(0.1)
    lines = [SPEC_LINE.search(line) for line in list(server.log) if SPEC_LINE.search(line)]
    assert lines
    assert sum(int(m.group(2)) for m in lines) <= accepted  # each interval's own
    mean, got, drafted = float(lines[-1].group(1)), int(lines[-1].group(2)), int(lines[-1].group(3))
    assert 1.0 <= mean <= 1 + NGRAM["num_speculative_tokens"] and got <= drafted
