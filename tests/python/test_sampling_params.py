"""SamplingParams: vLLM's defaults, normalization, and one ValueError per bad value."""

import pytest

from kvserve.sampling_params import SamplingParams


def test_defaults_are_vllms():
    p = SamplingParams()
    assert (p.n, p.temperature, p.top_p, p.top_k, p.min_p, p.seed) == (1, 1.0, 1.0, 0, 0.0, None)
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.0, 0.0, 1.0)
    assert (p.stop, p.stop_token_ids, p.ignore_eos, p.max_tokens, p.min_tokens) == ([], [], False, 16, 0)
    assert (p.logprobs, p.prompt_logprobs, p.logit_bias) == (None, None, None)
    assert p.skip_special_tokens and p.spaces_between_special_tokens and not p.include_stop_str_in_output
    assert not p.greedy


def test_normalization():
    assert SamplingParams(stop="###").stop == ["###"]
    assert SamplingParams(stop=("a", "b")).stop == ["a", "b"]
    assert SamplingParams(top_k=-1).top_k == 0
    assert SamplingParams(stop_token_ids=(5, 6)).stop_token_ids == [5, 6]
    greedy = SamplingParams(temperature=0.0, top_p=0.5, top_k=3, min_p=0.2)
    assert greedy.greedy and (greedy.top_p, greedy.top_k, greedy.min_p) == (1.0, 0, 0.0)
    assert SamplingParams(max_tokens=None, min_tokens=100).max_tokens is None


def test_stop_token_ids_and_vocab_checks():
    p = SamplingParams(stop_token_ids=[7], logit_bias={3: 1.5})
    assert p.all_stop_token_ids([2]) == {2, 7}
    assert SamplingParams(stop_token_ids=[7], ignore_eos=True).all_stop_token_ids([2]) == {7}
    p.check_token_ids(8)
    with pytest.raises(ValueError, match=r"stop_token_ids has token ids \[7\]: expected ids below the vocabulary size"):
        p.check_token_ids(7)
    with pytest.raises(ValueError, match=r"logit_bias has token ids \[3\]"):
        p.check_token_ids(3)
    with pytest.raises(ValueError, match="logprobs must be at most the vocabulary size 10, got 11"):
        SamplingParams(logprobs=11).check_token_ids(10)
    allowed = SamplingParams(allowed_token_ids=(4, 9))
    assert allowed.allowed_token_ids == [4, 9]
    allowed.check_token_ids(10)
    with pytest.raises(ValueError, match=r"allowed_token_ids has token ids \[9\]: expected ids below the vocabulary"):
        allowed.check_token_ids(9)
    # Any iterable, read once: a generator's ids are kept, not consumed by the check.
    once = SamplingParams(allowed_token_ids=(t for t in (4, 9)), stop_token_ids=(t for t in (2, 3)))
    assert (once.allowed_token_ids, once.stop_token_ids) == ([4, 9], [2, 3])


def test_truncated_prompt_keeps_the_last_tokens():
    prompt = [5, 6, 7, 8, 9]
    assert SamplingParams().truncated_prompt(prompt, 4) == prompt
    assert SamplingParams(truncate_prompt_tokens=2).truncated_prompt(prompt, 4) == [8, 9]
    assert SamplingParams(truncate_prompt_tokens=9).truncated_prompt(prompt, 4) == prompt
    assert SamplingParams(truncate_prompt_tokens=-1).truncated_prompt(prompt, 4) == [7, 8, 9]
    assert SamplingParams(truncate_prompt_tokens=-1).truncated_prompt(prompt, 9) == prompt


BAD_VALUES = [
    ("n", 0, r"n must be an integer >= 1, got 0"),
    ("n", 1.5, r"n must be an integer >= 1"),
    ("presence_penalty", 2.5, r"presence_penalty must be a number in \[-2, 2\], got 2.5"),
    ("frequency_penalty", -3, r"frequency_penalty must be a number in \[-2, 2\]"),
    ("frequency_penalty", float("nan"), r"frequency_penalty must be a number in \[-2, 2\]"),
    ("repetition_penalty", 0.0, r"repetition_penalty must be a number > 0, got 0.0"),
    ("temperature", -0.1, r"temperature must be a number >= 0 \(0 = greedy\), got -0.1"),
    ("temperature", float("inf"), r"temperature must be a number >= 0"),
    ("temperature", "hot", r"temperature must be a number >= 0"),
    ("top_p", 0.0, r"top_p must be a number in \(0, 1\], got 0.0"),
    ("top_p", 1.1, r"top_p must be a number in \(0, 1\]"),
    ("top_k", -2, r"top_k must be an integer >= 1, or 0 or -1 to disable it, got -2"),
    ("top_k", 2.0, r"top_k must be an integer >= 1, or 0 or -1"),
    ("min_p", 1.5, r"min_p must be a number in \[0, 1\], got 1.5"),
    ("seed", "42", r"seed must be an integer or None, got '42'"),
    ("seed", 2**63, r"seed must be in \[-2\*\*63, 2\*\*63 - 1 - \(n - 1\)\] \(sample i of n=1 is seeded with "
                    r"seed \+ i, an int64\), got 9223372036854775808"),
    ("seed", -(2**63) - 1, r"seed must be in \[-2\*\*63, 2\*\*63 - 1 - \(n - 1\)\]"),
    ("stop", "", r"stop must be a non-empty string or a list of non-empty strings"),
    ("stop", ["ok", 3], r"stop must be a non-empty string or a list of non-empty strings"),
    ("stop_token_ids", [1, -1], r"stop_token_ids must be a list of token ids \(integers >= 0\), got -1"),
    ("stop_token_ids", 5, r"stop_token_ids must be a list of token ids"),
    ("ignore_eos", 1, r"ignore_eos must be True or False, got 1"),
    ("skip_special_tokens", None, r"skip_special_tokens must be True or False"),
    ("spaces_between_special_tokens", "yes", r"spaces_between_special_tokens must be True or False"),
    ("include_stop_str_in_output", 0, r"include_stop_str_in_output must be True or False"),
    ("max_tokens", 0, r"max_tokens must be an integer >= 1, or None for up to the context length, got 0"),
    ("min_tokens", -1, r"min_tokens must be an integer >= 0, got -1"),
    ("logprobs", -2, r"logprobs must be an integer >= 0, -1 for the whole vocabulary, or None, got -2"),
    ("prompt_logprobs", True, r"prompt_logprobs must be an integer >= 0, -1 for the whole vocabulary, or None, "
                              r"got True"),
    ("logit_bias", [1, 2], r"logit_bias must be a dict of token id -> bias"),
    ("logit_bias", {"5": 1.0}, r"logit_bias must be keyed by token ids \(integers >= 0\), got '5'"),
    ("logit_bias", {5: 101.0}, r"logit_bias\[5\] must be a number in \[-100, 100\], got 101.0"),
    ("allowed_token_ids", [], r"allowed_token_ids must be a non-empty list of token ids \(integers >= 0\), got \[\]"),
    ("allowed_token_ids", [3, -2], r"allowed_token_ids must be a non-empty list of token ids \(integers >= 0\), got -2"),
    ("allowed_token_ids", 4, r"allowed_token_ids must be a non-empty list of token ids"),
    ("allowed_token_ids", [1.0], r"allowed_token_ids must be a non-empty list of token ids"),
    ("truncate_prompt_tokens", 0, r"truncate_prompt_tokens must be an integer >= 1, -1 \(all the context holds\) or None"),
    ("truncate_prompt_tokens", -2, r"truncate_prompt_tokens must be an integer >= 1, -1"),
    ("truncate_prompt_tokens", True, r"truncate_prompt_tokens must be an integer >= 1, -1"),
]


@pytest.mark.parametrize("name, value, message", BAD_VALUES, ids=[f"{n}={v!r}" for n, v, _ in BAD_VALUES])
def test_each_bad_value_names_the_field_and_range(name, value, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**{name: value})


def test_min_tokens_above_max_tokens():
    with pytest.raises(ValueError, match=r"min_tokens must be at most max_tokens \(4\), got 5"):
        SamplingParams(max_tokens=4, min_tokens=5)


def test_seed_plus_n_fits_an_int64():
    assert SamplingParams(seed=2**63 - 1).seed == 2**63 - 1
    assert SamplingParams(seed=-(2**63), n=4).seed == -(2**63)
    assert SamplingParams(seed=2**63 - 4, n=4).n == 4
    with pytest.raises(ValueError, match=r"seed must be in .*n=5.*got 9223372036854775804"):
        SamplingParams(seed=2**63 - 4, n=5)
