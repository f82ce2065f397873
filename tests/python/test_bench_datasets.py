"""Benchmark prompts: WORKLOAD.md's offline draw and vLLM's random dataset."""

import numpy as np
import pytest

from kvserve.bench.datasets import offline_prompts, random_requests, warmup_prompt
from kvserve.bench.presets import Case, parse_case


def test_offline_prompts_are_workload_md_draw():
    prompts = offline_prompts(8, 16)
    assert prompts.shape == (8, 16) and prompts.dtype == np.int64
    np.testing.assert_array_equal(prompts, np.random.default_rng(0).integers(10, 31999, (8, 16)))
    assert prompts.min() >= 10 and prompts.max() <= 31998


def test_offline_prompts_stay_below_a_smaller_vocab():
    np.testing.assert_array_equal(offline_prompts(8, 16, vocab_size=32000), offline_prompts(8, 16))
    small = offline_prompts(64, 16, vocab_size=100)
    np.testing.assert_array_equal(small, np.random.default_rng(0).integers(10, 99, (64, 16)))
    with pytest.raises(ValueError, match="vocab_size=11"):
        offline_prompts(1, 4, vocab_size=11)


def test_warmup_prompt_is_none_of_the_benchmark_prompts():
    warmup = warmup_prompt(16)
    np.testing.assert_array_equal(warmup, offline_prompts(1, 16, seed=1))
    # Not even the first token is shared with WORKLOAD.md's largest CPU case, so no block is.
    assert (offline_prompts(256, 16)[:, 0] != warmup[0, 0]).all()


def test_offline_prompts_reject_empty():
    with pytest.raises(ValueError, match="input_len=0"):
        offline_prompts(4, 0)


def test_random_fixed_lengths():
    requests = random_requests(5, 12, 7, 0.0, vocab_size=100, seed=3)
    assert [r.prompt_len for r in requests] == [12] * 5
    assert [r.expected_output_len for r in requests] == [7] * 5
    ids = np.concatenate([r.prompt_token_ids for r in requests])
    assert ids.min() >= 10 and ids.max() <= 98
    assert len({tuple(r.prompt_token_ids) for r in requests}) == 5


def test_random_range_ratio_spans_vllm_interval():
    requests = random_requests(2000, 100, 10, 0.5, vocab_size=1000, seed=0)
    input_lens = {r.prompt_len for r in requests}
    output_lens = {r.expected_output_len for r in requests}
    assert input_lens == set(range(50, 151))  # uniform integers in [L(1-r), L(1+r)], both ends in
    assert output_lens == set(range(5, 16))


def test_a_random_prefix_opens_every_prompt_and_leaves_the_rest_as_it_was():
    plain = random_requests(4, 10, 3, 0.2, vocab_size=500, seed=5)
    prefixed = random_requests(4, 10, 3, 0.2, vocab_size=500, seed=5, prefix_len=16)
    prefixes = {tuple(r.prompt_token_ids[:16]) for r in prefixed}
    assert len(prefixes) == 1 and len(set(next(iter(prefixes)))) > 1
    assert [r.prompt_token_ids[16:] for r in prefixed] == [r.prompt_token_ids for r in plain]
    assert [r.expected_output_len for r in prefixed] == [r.expected_output_len for r in plain]


def test_random_is_reproducible_by_seed():
    a, b, c = (random_requests(3, 8, 4, 0.25, 500, seed) for seed in (1, 1, 2))
    assert a == b and a != c


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"range_ratio": 1.0}, "range ratio 1.0"),
        ({"range_ratio": -0.1}, "range ratio -0.1"),
        ({"input_len": 0}, "random input len=0"),
        ({"output_len": 1, "range_ratio": 0.5}, "random output len=1"),
        ({"vocab_size": 11}, "vocab_size=11"),
        ({"num_prompts": 0}, "num_prompts=0"),
        ({"prefix_len": -1}, "random prefix len=-1"),
    ],
)
def test_random_rejects_bad_arguments(kwargs, match):
    args = {"num_prompts": 2, "input_len": 8, "output_len": 8, "range_ratio": 0.0, "vocab_size": 100, "seed": 0}
    with pytest.raises(ValueError, match=match):
        random_requests(**(args | kwargs))


def test_case_names_round_trip():
    assert parse_case("offline-256-64-64") == Case("offline", 256, 64, 64)
    assert parse_case("serve-64-128-128@inf") == Case("serve", 64, 128, 128, float("inf"))
    assert parse_case("serve-64-128-128@4") == Case("serve", 64, 128, 128, 4.0)
    for name in ("offline-256-64-64", "serve-64-128-128@inf", "serve-64-128-128@4", "serve-1-2-3@0.5"):
        assert parse_case(name).name == name


@pytest.mark.parametrize("name", ["offline-1-2", "offline-1-2-3@4", "serve-1-2-3", "serve-0-2-3@1", "serve-1-2-3@0"])
def test_bad_case_names(name):
    with pytest.raises(ValueError, match="bad case"):
        parse_case(name)
