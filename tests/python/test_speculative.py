"""Speculative decoding by prompt lookup (speculative_config, vLLM's "ngram" method): outputs equal the
engine's without it, greedy token for token and random in distribution, through every sampling
option a draft's sample must see (penalties, min_tokens, bad words, logprobs, stop strings, n > 1,
structured outputs),
with no KV block leaks; and the config's errors.

The model's text repeats itself in part (tiny_models.save_repeating_model), so drafts are both
taken and refused; the tests check both happened, so they cannot pass with speculation idle."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from kvserve import Engine, RequestOutputKind, SamplingParams
from kvserve.kv_cache import kv_bytes_per_token
from kvserve.model_config import ModelConfig
from requires_cuda import requires_cuda
from step_modes import set_step_mode

NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3, "prompt_lookup_min": 1}


def make_engine(directory, mode: str = "plain", **kwargs) -> Engine:
    kwargs.setdefault("kv_cache_memory_gb", 0.01)
    kwargs.setdefault("device", "cpu")
    engine = Engine(str(directory), dtype="float32", **kwargs)
    return engine if kwargs["device"] != "cpu" else set_step_mode(engine, mode)


def prompts(count: int, length: int = 8, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"prompt_token_ids": rng.integers(3, 300, length).tolist()} for _ in range(count)]


def assert_idle(engine: Engine) -> None:
    stats = engine.stats()
    assert not engine.has_unfinished_requests() and stats.num_free_blocks == stats.num_blocks - 1, stats


def assert_drafts_taken_and_refused(engine: Engine) -> None:
    stats = engine.stats()
    assert 0 < stats.num_accepted_tokens < stats.num_draft_tokens, stats
    assert sum(stats.num_accepted_tokens_per_pos) == stats.num_accepted_tokens
    assert len(stats.num_accepted_tokens_per_pos) == NGRAM["num_speculative_tokens"]


CASES = {
    "greedy": SamplingParams(temperature=0, max_tokens=48, ignore_eos=True),
    "logprobs and penalties": SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, logprobs=3,
                                             repetition_penalty=1.02, frequency_penalty=0.02, presence_penalty=0.01),
    "min_tokens and EOS": SamplingParams(temperature=0, max_tokens=40, min_tokens=12),
    "bad words": SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, bad_words=["ka", "lo mi"]),
    "short max_tokens": SamplingParams(temperature=0, max_tokens=3, ignore_eos=True),
}


@pytest.mark.parametrize("mode", ["plain", "overlapped"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_greedy_outputs_equal_the_engines_without_drafts(repeating_model_dir, case, mode):
    params = CASES[case]
    batch = prompts(6)
    plain = make_engine(repeating_model_dir, mode).generate(batch, params, use_tqdm=False)
    engine = make_engine(repeating_model_dir, mode, speculative_config=NGRAM)
    speculated = engine.generate(batch, params, use_tqdm=False)
    for a, b in zip(plain, speculated):
        assert b.outputs[0].token_ids == a.outputs[0].token_ids
        assert b.outputs[0].finish_reason == a.outputs[0].finish_reason
        assert b.outputs[0].text == a.outputs[0].text
        if params.logprobs is not None:
            for expected, got in zip(a.outputs[0].logprobs, b.outputs[0].logprobs):
                assert got.keys() == expected.keys()
                for token, entry in expected.items():
                    assert got[token].logprob == pytest.approx(entry.logprob, abs=1e-4)
                    assert got[token].rank == entry.rank
            assert b.outputs[0].cumulative_logprob == pytest.approx(a.outputs[0].cumulative_logprob, abs=1e-3)
    if params.max_tokens > 3:
        assert_drafts_taken_and_refused(engine)
    assert_idle(engine)


def test_preemption_and_prefix_hits_keep_the_outputs(repeating_model_dir):
    # 15 usable blocks of 4 tokens for six requests of up to 56 tokens: preempted, they recompute
    # from their prefix-cache hits.
    params = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    batch = prompts(6)
    block_bytes = 4 * kv_bytes_per_token(ModelConfig.from_pretrained(repeating_model_dir), torch.float32)
    kwargs = dict(block_size=4, max_model_len=60, kv_cache_memory_gb=16 * block_bytes / 2**30)
    plain = make_engine(repeating_model_dir).generate(batch, params, use_tqdm=False)
    engine = make_engine(repeating_model_dir, speculative_config=NGRAM, **kwargs)
    speculated = engine.generate(batch, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in speculated] == [o.outputs[0].token_ids for o in plain]
    assert engine.stats().num_preemptions > 0
    assert_drafts_taken_and_refused(engine)
    assert_idle(engine)


def test_lora_adapters_keep_the_outputs(repeating_model_dir, tmp_path):
    pytest.importorskip("peft")
    from kvserve import LoRARequest
    from test_lora import save_adapter

    # The MLP's projections only: the text still repeats itself.
    loras = [LoRARequest(f"a{i}", i + 1, save_adapter(repeating_model_dir, tmp_path / f"a{i}", seed=i,
                                                        target_modules=["gate_proj", "up_proj", "down_proj"]))
             for i in range(2)]
    batch = prompts(6)
    mixed = [loras[0], None, loras[1], loras[0], None, loras[1]]
    params = CASES["greedy"]
    plain = make_engine(repeating_model_dir, enable_lora=True, max_loras=2)
    engine = make_engine(repeating_model_dir, enable_lora=True, max_loras=2, speculative_config=NGRAM)
    for requests in (mixed, loras[0]):
        expected = plain.generate(batch, params, use_tqdm=False, lora_request=requests)
        got = engine.generate(batch, params, use_tqdm=False, lora_request=requests)
        assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in expected]
    assert_drafts_taken_and_refused(engine)
    assert_idle(engine)


@requires_cuda
def test_on_the_gpu_outputs_equal_the_engines_without_drafts(repeating_model_dir):
    # Steps with drafts run eagerly, plain decodes replay their CUDA graphs; logprobs and
    # penalties read the drafts on the device.
    batch = prompts(6)
    plain = make_engine(repeating_model_dir, device="cuda")
    engine = make_engine(repeating_model_dir, device="cuda", speculative_config=NGRAM)
    assert not engine.async_scheduling
    for case in ("greedy", "logprobs and penalties"):
        expected = plain.generate(batch, CASES[case], use_tqdm=False)
        got = engine.generate(batch, CASES[case], use_tqdm=False)
        assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in expected]
    assert_drafts_taken_and_refused(engine)
    assert_idle(engine)


def test_a_stop_string_inside_the_kept_drafts_ends_the_output_there(repeating_model_dir):
    plain = make_engine(repeating_model_dir)
    engine = make_engine(repeating_model_dir, speculative_config=NGRAM)
    stepwise = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True, output_kind=RequestOutputKind.DELTA)
    cut = 0
    for prompt in prompts(6):
        # A step that kept two drafts or more lands three tokens or more: the stop string is the
        # output's text up to the second of them, which ends it there, drafts kept after it.
        deltas = [o.outputs[0].token_ids for o in step_outputs(engine, prompt, stepwise)]
        landed = next((sum(map(len, deltas[:i])) for i, d in enumerate(deltas) if len(d) >= 3), None)
        if landed is None:
            continue
        stop = engine.tokenizer.decode(sum(deltas, [])[:landed + 2])
        params = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True, stop=[stop])
        expected = plain.generate([prompt], params, use_tqdm=False)[0].outputs[0]
        got = engine.generate([prompt], params, use_tqdm=False)[0].outputs[0]
        assert (got.text, got.token_ids, got.finish_reason, got.stop_reason) == (
            expected.text, expected.token_ids, expected.finish_reason, stop)
        assert len(got.token_ids) == landed + 2
        cut += 1
    assert cut >= 2
    assert_idle(engine)


def step_outputs(engine: Engine, prompt, params: SamplingParams) -> list:
    """The outputs of one request run alone, step by step."""
    engine.add_request("alone", prompt, params)
    outputs = []
    while engine.has_unfinished_requests():
        outputs += engine.step()
    return outputs


def chi_square_critical(df: int, z: float) -> float:
    """The chi-square distribution's quantile at the normal quantile z (Wilson-Hilferty)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def two_sample_chi_square(a: list, b: list) -> tuple[float, int]:
    """The homogeneity statistic of two equal-size samples and its degrees of freedom; values seen
    fewer than 10 times in both together are pooled."""
    count_a, count_b = Counter(a), Counter(b)
    pooled = [0.0, 0.0]
    rows = []
    for value in count_a.keys() | count_b.keys():
        pair = (count_a[value], count_b[value])
        if sum(pair) >= 10:
            rows.append(pair)
        else:
            pooled = [pooled[0] + pair[0], pooled[1] + pair[1]]
    if sum(pooled):
        rows.append(tuple(pooled))
    statistic = sum((x - y) ** 2 / (x + y) for x, y in rows)
    return statistic, len(rows) - 1


def test_random_samples_follow_the_distribution_of_the_engine_without_drafts(repeating_model_dir):
    params = SamplingParams(temperature=1.0, max_tokens=12, n=256, ignore_eos=True)
    batch = prompts(4, seed=1)
    positions = (1, 4, 11)

    def sample(engine):
        outputs = engine.generate(batch, params, use_tqdm=False)
        return [[(o.request_id, c.token_ids[k]) for o in outputs for c in o.outputs] for k in positions]

    plain = sample(make_engine(repeating_model_dir, max_num_seqs=256))
    engine = make_engine(repeating_model_dir, max_num_seqs=256, speculative_config=NGRAM)
    speculated = sample(engine)
    assert_drafts_taken_and_refused(engine)
    for a, b in zip(plain, speculated):
        # The token at each position against the 1e-5 quantile (z = 4.26), three tests in all.
        statistic, df = two_sample_chi_square(a, b)
        assert df > 20
        assert statistic < chi_square_critical(df, 4.26), (statistic, df)
    assert_idle(engine)


def test_structured_outputs_equal_the_engines_without_drafts(repeating_model_dir):
    from kvserve.structured_outputs import StructuredOutputsParams

    schema = {"type": "object", "properties": {"tags": {"type": "array", "items": {"enum": ["ka", "lo", "mi"]}}},
              "required": ["tags"]}
    plain, engine = make_engine(repeating_model_dir), make_engine(repeating_model_dir, speculative_config=NGRAM)
    for structured in (StructuredOutputsParams(regex="(ka lo |mi ka )+"), StructuredOutputsParams(json=schema)):
        params = SamplingParams(temperature=0, max_tokens=40, structured_outputs=structured)
        expected = plain.generate(prompts(4), params, use_tqdm=False)
        got = engine.generate(prompts(4), params, use_tqdm=False)
        assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in expected]
    assert engine.stats().num_accepted_tokens > 0  # the grammar's repeats are drafted and kept
    assert_idle(engine)


@pytest.mark.parametrize("config, message", [
    ({"method": "eagle", "num_speculative_tokens": 2}, "method must be one of"),
    ({"method": "ngram"}, "num_speculative_tokens must be an integer in"),
    ({"method": "ngram", "num_speculative_tokens": 0}, "num_speculative_tokens must be an integer in"),
    ({"method": "ngram", "num_speculative_tokens": 65}, "num_speculative_tokens must be an integer in"),
    ({"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 4, "prompt_lookup_max": 2},
     "prompt_lookup_min \\(4\\) must be <= prompt_lookup_max \\(2\\)"),
    ({"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 1, "prompt_lookup_max": 0},
     "prompt_lookup_max must be"),
    ({"method": "ngram", "num_speculative_tokens": 2, "model": "draft"}, "unknown keys \\['model'\\]"),
    ({"method": "ngram", "num_speculative_tokens": 2, "disable_by_batch_size": 0}, "disable_by_batch_size must be"),
    ("{not json", "must be a JSON object"),
    ([1], "must be a dict"),
])
def test_a_bad_speculative_config_is_a_value_error(repeating_model_dir, config, message):
    with pytest.raises(ValueError, match=message):
        make_engine(repeating_model_dir, speculative_config=config)


def test_speculation_refuses_async_scheduling_and_pooling(repeating_model_dir):
    with pytest.raises(ValueError, match="async_scheduling and speculative_config"):
        make_engine(repeating_model_dir, speculative_config=NGRAM, async_scheduling=True)
    with pytest.raises(ValueError, match="a pooling engine"):
        make_engine(repeating_model_dir, speculative_config=NGRAM, runner="pooling")


def test_no_drafts_while_more_sequences_run_than_disable_by_batch_size(repeating_model_dir):
    params = CASES["greedy"]
    engine = make_engine(repeating_model_dir, speculative_config={**NGRAM, "disable_by_batch_size": 2})
    engine.generate(prompts(3), params, use_tqdm=False)
    assert engine.stats().num_drafts == 0  # three running from the first decode to the last
    engine.generate(prompts(2), params, use_tqdm=False)
    assert engine.stats().num_drafts > 0
    assert_idle(engine)


def test_the_engine_says_it_speculates(repeating_model_dir, caplog):
    with caplog.at_level("INFO", logger="kvserve"):
        make_engine(repeating_model_dir, speculative_config={**NGRAM, "disable_by_batch_size": 8})
    assert ("speculative decoding by prompt lookup: up to 4 draft tokens a decode, from n-grams of 1 to 3 tokens, "
            "none while more than 8 sequences run; steps are not scheduled ahead") in caplog.text


def test_lookup_bounds_default_as_vllms():
    from kvserve.speculative import SpeculativeConfig

    assert SpeculativeConfig.parse({"num_speculative_tokens": 3}) == SpeculativeConfig(3, 5, 5)
    assert SpeculativeConfig.parse({"num_speculative_tokens": 3, "prompt_lookup_max": 4}) == SpeculativeConfig(3, 4, 4)
    assert SpeculativeConfig.parse('{"num_speculative_tokens": 3, "prompt_lookup_min": 2}') == SpeculativeConfig(3, 2, 2)


@pytest.mark.parametrize("fields", [
    dict(presence_penalty=0.5, frequency_penalty=0.3, repetition_penalty=1.2),
    dict(min_tokens=5),
    dict(bad_words=["ka lo"]),
])
def test_each_draft_row_reads_the_drafts_before_it_as_output(repeating_model_dir, fields):
    """SampleInputs.metadata: the row after j drafts has the metadata of the sequence's output with
    those drafts appended (what penalties, min_tokens and bad words read)."""
    from kvserve.model_runner import SampleInputs
    from kvserve.sampler import Sampler
    from kvserve.sampling_metadata import SamplingMetadata

    engine = make_engine(repeating_model_dir)
    params = SamplingParams(temperature=0, max_tokens=20, **fields)
    engine.add_request("r", {"prompt_token_ids": [5, 9, 100, 7]}, params)
    state = engine.requests["r"]
    sequence = state.sequences[0]
    ka_lo = engine.tokenizer.encode("ka lo", add_special_tokens=False)
    sequence.token_ids.extend([11, 12, ka_lo[0]])
    drafts = [[], ka_lo[1:2], ka_lo[1:2] + [11]]
    logits = torch.randn(3, engine.model_config.vocab_size)
    inputs = SampleInputs(Sampler(), logits, [state] * 3, [sequence] * 3, engine.model_config.vocab_size,
                          tuple(engine.eos_token_ids), drafts)
    expected = SamplingMetadata.from_requests(
        [params] * 3, [sequence.token_ids + d for d in drafts], [state.prompt_token_array] * 3, [None] * 3,
        vocab_size=engine.model_config.vocab_size, eos_token_ids=engine.eos_token_ids,
        bad_words=[state.bad_words] * 3)
    got = inputs.metadata()
    for name in ("banned", "penalties"):
        want, have = getattr(expected, name), getattr(got, name)
        assert (want is None) == (have is None), name
        if name == "banned" and want is not None:
            assert all(torch.equal(a, b) for a, b in zip(want, have))
        if name == "penalties" and want is not None:
            for field in ("output_tokens", "seen_tokens"):
                assert all(torch.equal(a, b) for a, b in zip(getattr(want, field), getattr(have, field)))
    assert expected.banned is not None or expected.penalties is not None
    engine.abort("r")
