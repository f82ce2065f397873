"""Structured outputs (StructuredOutputsParams) in the offline Engine: every output that ends by
itself matches what it was held to, on a random-weight model whose own choices match nothing; the
mask touches only the rows that ask for it; bad grammars are clear errors."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from kvserve import Engine, SamplingParams, StructuredOutputsParams
from kvserve.grammar import bitmask_words, set_tokens
from kvserve.sampler import apply_grammar_mask
from kvserve.sampling_metadata import GrammarMask
from kvserve.structured_outputs import _closed_objects
from requires_cuda import requires_cuda

PROMPTS = ["The capital of France is", "Hello, my name is", "1, 2, 3,"]
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "ok": {"type": "boolean"},
        "size": {"enum": ["small", "large"]},
    },
    "required": ["name", "ok", "size"],
    "additionalProperties": False,
}
REGEX = r"[a-c]{3}-[0-9]{2}"
CHOICES = ["yes", "no", "maybe"]
# Outputs that end by themselves (the grammar bounds them), and a check of each finished text.
BOUNDED = {
    "choice": (StructuredOutputsParams(choice=CHOICES), lambda text: text in CHOICES),
    "regex": (StructuredOutputsParams(regex=REGEX), lambda text: re.fullmatch(REGEX, text) is not None),
    "json schema": (StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True),
                    lambda text: _matches_schema(json.loads(text))),
    "grammar": (StructuredOutputsParams(grammar='root ::= "(" ("x" | "y") ")" ("." | "!")'),
                lambda text: re.fullmatch(r"\([xy]\)[.!]", text) is not None),
}


def _matches_schema(value) -> bool:
    return (set(value) == {"name", "ok", "size"} and isinstance(value["name"], str) and len(value["name"]) <= 6
            and isinstance(value["ok"], bool) and value["size"] in ("small", "large"))


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Engine(str(tiny_model_dir("LlamaForCausalLM")), dtype="float32", kv_cache_memory_gb=0.02)


def generate(engine, prompts=PROMPTS, **params):
    return engine.generate(prompts, SamplingParams(**params), use_tqdm=False)


@pytest.mark.parametrize("kind", BOUNDED)
@pytest.mark.parametrize("sampling", [dict(temperature=0), dict(temperature=1.0, seed=3), dict(temperature=1.0, n=3)],
                         ids=["greedy", "seeded", "n=3"])
def test_every_output_matches_what_it_was_held_to(engine, kind, sampling):
    params, matches = BOUNDED[kind]
    for output in generate(engine, max_tokens=48, structured_outputs=params, **sampling):
        for sample in output.outputs:
            assert sample.finish_reason == "stop", sample
            assert matches(sample.text), sample.text


@requires_cuda
@pytest.mark.parametrize("enforce_eager", [False, True], ids=["graphs", "eager"])
def test_on_a_gpu_every_output_matches(tiny_model_dir, enforce_eager):
    """On a GPU steps are scheduled ahead by default (retracting rows top_p's sampler settles) and
    decode steps replay CUDA graphs; the bitmask is unpacked on the device."""
    pytest.importorskip("llguidance")  # carried to the lent GPU machine as a wheel (bench/gpu_check.sh)
    gpu = Engine(str(tiny_model_dir("LlamaForCausalLM")), dtype="float32", device="cuda", kv_cache_memory_gb=0.05,
                 enforce_eager=enforce_eager)
    for params, matches in BOUNDED.values():
        for output in generate(gpu, max_tokens=48, temperature=1.0, top_p=0.97, n=3, seed=3,
                               structured_outputs=params):
            assert all(s.finish_reason == "stop" and matches(s.text) for s in output.outputs), output.outputs


def test_with_a_reasoning_end_the_grammar_holds_what_follows_it(engine):
    """A reasoning model thinks until its </think> token, unconstrained; the grammar holds the rest
    (none of the tiny tokenizer's tokens is </think>: one the model writes third stands in for it).
    A prompt that holds the token already (thinking closed by the template) is held from the start."""
    [plain] = generate(engine, PROMPTS[:1], max_tokens=8, temperature=0)
    thinking = plain.outputs[0].token_ids[:3]
    assert thinking[2] not in thinking[:2] and thinking[2] not in plain.prompt_token_ids
    params, matches = BOUNDED["choice"]
    engine.grammars.set_reasoning_end(thinking[2])
    try:
        [output] = generate(engine, PROMPTS[:1], max_tokens=24, temperature=0, structured_outputs=params)
        closed = [{"prompt_token_ids": plain.prompt_token_ids + [thinking[2]]}]
        [from_start] = generate(engine, closed, max_tokens=24, temperature=0, structured_outputs=params)
    finally:
        engine.grammars.set_reasoning_end(None)
    assert output.outputs[0].token_ids[:3] == thinking
    assert matches(engine.tokenizer.decode(output.outputs[0].token_ids[3:], skip_special_tokens=True))
    assert output.outputs[0].finish_reason == "stop" and matches(from_start.outputs[0].text)


def test_without_a_grammar_the_model_matches_none_of_them(engine):
    """The tests above would pass for an engine ignoring the grammar only if the model obeyed anyway."""
    texts = [output.outputs[0].text for output in generate(engine, max_tokens=12, temperature=0)]
    for _, matches in BOUNDED.values():
        for text in texts:
            try:
                matched = matches(text)
            except ValueError:  # not JSON
                matched = False
            assert not matched, text


def test_json_object_and_flexible_whitespace_outputs_are_json_prefixes(engine):
    """Unbounded JSON (any object; whitespace the model may repeat) may run to max_tokens: what ends
    by itself parses, and what is cut off is the start of an object."""
    for params in (StructuredOutputsParams(json_object=True), StructuredOutputsParams(json=SCHEMA)):
        for output in generate(engine, max_tokens=24, temperature=1.0, seed=5, structured_outputs=params):
            text = output.outputs[0].text
            assert text.lstrip().startswith("{"), text
            if output.outputs[0].finish_reason == "stop":
                assert isinstance(json.loads(text), dict), text


def test_rows_without_a_grammar_are_untouched(engine):
    plain = generate(engine, max_tokens=10, temperature=1.0, seed=11)
    mixed = engine.generate(PROMPTS * 2, [SamplingParams(max_tokens=10, temperature=1.0, seed=11)] * 3 + [
        SamplingParams(max_tokens=10, temperature=1.0, seed=11, structured_outputs=BOUNDED["regex"][0])] * 3,
        use_tqdm=False)
    assert [o.outputs[0].token_ids for o in mixed[:3]] == [o.outputs[0].token_ids for o in plain]
    assert all(re.fullmatch(REGEX, o.outputs[0].text) for o in mixed[3:])


def test_scheduled_ahead_and_preempted_steps_follow_the_grammar(engine, tiny_model_dir):
    """async_scheduling samples a step once the tokens of the step before reach the sequences, and
    retracts rows whose token changed when top_p's sampler settled; a small cache preempts and
    recomputes sequences. The matchers must see exactly the applied tokens: the outputs equal those
    of the plain engine, token for token."""
    params, matches = BOUNDED["json schema"]
    sampling = SamplingParams(max_tokens=48, temperature=1.0, top_p=0.97, n=3, seed=9, structured_outputs=params)
    prompts = [f"{prompt} {i}" for i in range(4) for prompt in PROMPTS]
    expected = [[s.token_ids for s in o.outputs] for o in engine.generate(prompts, sampling, use_tqdm=False)]
    for options in (dict(async_scheduling=True), dict(kv_cache_memory_gb=0.00016),
                    dict(async_scheduling=True, kv_cache_memory_gb=0.00016)):
        other = Engine(str(tiny_model_dir("LlamaForCausalLM")), dtype="float32",
                       **{"kv_cache_memory_gb": 0.02, **options})
        outputs = other.generate(prompts, sampling, use_tqdm=False)
        assert [[s.token_ids for s in o.outputs] for o in outputs] == expected, options
        assert all(s.finish_reason == "stop" and matches(s.text) for o in outputs for s in o.outputs)
        if "kv_cache_memory_gb" in options:
            assert other.stats().num_preemptions > 0


def test_logprobs_are_of_the_masked_distribution(engine):
    """As in vLLM: the grammar masks the logits before logprobs are taken, so a choice between two
    words puts all the first token's probability on the tokens that start one of them."""
    [output] = generate(engine, PROMPTS[:1], max_tokens=8, temperature=0, logprobs=5,
                        structured_outputs=StructuredOutputsParams(choice=["yes", "no"]))
    first = output.outputs[0].logprobs[0]
    finite = {t: e.logprob for t, e in first.items() if math.isfinite(e.logprob)}
    assert 1 <= len(finite) <= 2 and math.isclose(sum(math.exp(v) for v in finite.values()), 1.0, rel_tol=1e-4)
    assert output.outputs[0].text in ("yes", "no")


def test_the_grammar_end_wins_over_min_tokens(engine):
    plain = generate(engine, max_tokens=20, temperature=0, structured_outputs=StructuredOutputsParams(choice=CHOICES))
    for output, reference in zip(generate(engine, max_tokens=20, min_tokens=10, temperature=0,
                                          structured_outputs=StructuredOutputsParams(choice=CHOICES)), plain):
        sample = output.outputs[0]
        assert sample.finish_reason == "stop" and sample.text in CHOICES
        assert sample.token_ids == reference.outputs[0].token_ids  # one end-of-sequence token, not ten


def test_allowed_token_ids_do_not_combine_with_a_grammar():
    with pytest.raises(ValueError, match="cannot be combined"):
        SamplingParams(allowed_token_ids=[5, 6], structured_outputs=StructuredOutputsParams(choice=["a"]))


def test_a_model_vocabulary_other_than_the_tokenizers(tiny_model_dir):
    """The model's vocabulary may pad the tokenizer's, or stop short of it (ids never sampled)."""
    for vocab_size in (992, 1037):
        other = Engine(str(tiny_model_dir("LlamaForCausalLM", vocab_size=vocab_size)), dtype="float32",
                       kv_cache_memory_gb=0.02)
        params, matches = BOUNDED["regex"]
        for output in generate(other, max_tokens=16, temperature=1.0, seed=1, structured_outputs=params):
            assert output.outputs[0].finish_reason == "stop" and matches(output.outputs[0].text)


def test_past_the_grammar_end_ignore_eos_makes_only_end_tokens(engine, caplog):
    for output in generate(engine, max_tokens=8, temperature=0, ignore_eos=True,
                           structured_outputs=StructuredOutputsParams(choice=CHOICES)):
        sample = output.outputs[0]
        assert sample.finish_reason == "length" and sample.text in CHOICES
        assert sample.token_ids[-3:] == [engine.tokenizer.eos_token_id] * 3
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


@pytest.mark.parametrize("params, message", [
    (dict(regex="[a-c"), "regex is not valid"),
    (dict(json={"type": "nonsense"}), "json is not valid"),
    (dict(grammar="root ::= (("), "grammar"),
])
def test_bad_grammars_are_refused_when_the_request_arrives(engine, params, message):
    with pytest.raises(ValueError, match=message):
        generate(engine, structured_outputs=StructuredOutputsParams(**params))
    assert not engine.has_unfinished_requests() and not engine.requests


@pytest.mark.parametrize("fields, message", [
    ({}, "exactly one of"),
    (dict(regex="a", choice=["a"]), "exactly one of"),
    (dict(json="{not json"), "does not parse"),
    (dict(json=[1]), "JSON schema"),
    (dict(choice=[]), "non-empty list"),
    (dict(choice=["a", 1]), "non-empty list"),
    (dict(regex=""), "non-empty string"),
    (dict(json_object=1), "True or False"),
])
def test_params_are_checked_when_built(fields, message):
    with pytest.raises(ValueError, match=message):
        StructuredOutputsParams(**fields)


def test_sampling_params_take_only_structured_outputs_params():
    with pytest.raises(ValueError, match="StructuredOutputsParams"):
        SamplingParams(structured_outputs={"regex": "a"})
    assert StructuredOutputsParams(json='{"type": "object"}').json == {"type": "object"}


def test_closing_objects_touches_only_schemas_that_list_properties():
    schema = {"type": "object", "properties": {
        "meta": {"type": "object"},
        "fixed": {"const": {"type": "object", "properties": {}}},
        "items": {"type": "array", "items": {"properties": {"x": {"type": "integer"}}}},
        "either": {"anyOf": [{"properties": {"y": {}}}, {"type": "string"}]},
        "open": {"properties": {"z": {}}, "additionalProperties": True}}}
    closed = _closed_objects(schema)
    assert closed["additionalProperties"] is False
    inner = closed["properties"]
    assert inner["meta"] == {"type": "object"} and inner["fixed"] == schema["properties"]["fixed"]
    assert inner["items"]["items"]["additionalProperties"] is False
    assert inner["either"]["anyOf"][0]["additionalProperties"] is False and inner["either"]["anyOf"][1] == {
        "type": "string"}
    assert inner["open"]["additionalProperties"] is True


def test_a_closed_schema_option_closes_every_object(engine):
    open_schema = {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"enum": [1]}},
                                                         "required": ["b"]}}, "required": ["a"]}
    params = StructuredOutputsParams(json=open_schema, disable_any_whitespace=True, disable_additional_properties=True)
    for output in generate(engine, max_tokens=40, temperature=1.0, seed=2, structured_outputs=params):
        assert json.loads(output.outputs[0].text) == {"a": {"b": 1}}


def test_without_a_tokenizer_it_is_refused(tiny_model_dir):
    bare = Engine(str(tiny_model_dir("LlamaForCausalLM")), dtype="float32", kv_cache_memory_gb=0.02,
                  skip_tokenizer_init=True)
    with pytest.raises(ValueError, match="skip_tokenizer_init"):
        bare.generate([{"prompt_token_ids": [5, 6]}],
                      SamplingParams(structured_outputs=StructuredOutputsParams(choice=["a"])), use_tqdm=False)


@pytest.mark.parametrize("vocab_size", [37, 64, 1000])
@pytest.mark.parametrize("rows", [[3, 1], [0, 1, 2, 3]], ids=["some rows", "every row"])
def test_the_bitmask_keeps_exactly_its_tokens(vocab_size, rows):
    generator = torch.Generator().manual_seed(vocab_size)
    logits = torch.randn(4, vocab_size, generator=generator)
    allowed = torch.rand(len(rows), vocab_size, generator=generator) < 0.3
    allowed[:, -1] = True  # the last word's top bit, whose int32 is negative
    words = torch.zeros(len(rows), bitmask_words(vocab_size) * 32, dtype=torch.int64)
    words[:, :vocab_size] = allowed.long()
    packed = (words.view(len(rows), -1, 32) << torch.arange(32)).sum(dim=2)
    bitmask = torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)
    expected = logits.clone()
    expected[rows] = torch.where(allowed, logits[rows], float("-inf"))
    apply_grammar_mask(logits, GrammarMask(torch.tensor(rows), bitmask, all_rows=len(rows) == 4))
    assert torch.equal(logits, expected)


def _allowed(row: np.ndarray) -> list[int]:
    return np.flatnonzero(np.unpackbits(row.view(np.uint8), bitorder="little")).tolist()


def test_a_matcher_ends_a_sequence_its_grammar_refused(engine, caplog):
    """Only a token the mask left out can put a matcher in error, which the sampler never draws;
    should one get there, the sequence may only end."""
    matcher = engine.grammars.compile(StructuredOutputsParams(choice=["yes"])).matcher()
    row = np.zeros(bitmask_words(engine.model_config.vocab_size), dtype=np.int32)
    matcher.fill_bitmask([], row)
    assert 1 <= len(_allowed(row)) < 10  # the tokens "yes" may start with
    matcher.fill_bitmask(engine.tokenizer.encode("no", add_special_tokens=False), row)
    assert _allowed(row) == sorted(engine.eos_token_ids)
    assert "the grammar refused" in caplog.text


def test_set_tokens_writes_every_bit_of_a_word():
    row = np.full(3, -1, dtype=np.int32)
    set_tokens(row, [0, 31, 32, 95])
    assert _allowed(row) == [0, 31, 32, 95]


def test_the_engine_takes_vllms_reasoning_parser(tiny_model_dir, caplog):
    directory = str(tiny_model_dir("LlamaForCausalLM"))
    with pytest.raises(ValueError, match="reasoning_parser must be one of"):
        Engine(directory, dtype="float32", kv_cache_memory_gb=0.02, reasoning_parser="r1")
    thinker = Engine(directory, dtype="float32", kv_cache_memory_gb=0.02, reasoning_parser="deepseek_r1")
    # The tiny tokenizer has no </think> token: grammars hold the whole reply, as said.
    assert thinker.reasoning_parser == "deepseek_r1" and thinker.grammars.reasoning_end is None
    assert "has no </think> token" in caplog.text
    params, matches = BOUNDED["choice"]
    assert all(matches(o.outputs[0].text) for o in generate(thinker, max_tokens=16, temperature=0,
                                                              structured_outputs=params))


def test_drafts_are_read_ahead_on_a_copy(engine, caplog):
    """Speculative decoding: a row after draft tokens gets the mask after them, the matcher staying
    where its sequence is; a draft the grammar refuses leaves its rows free (their samples are
    dropped), without the error a refused sequence logs."""
    grammar = engine.grammars.compile(StructuredOutputsParams(regex=REGEX))
    words = bitmask_words(engine.model_config.vocab_size)
    first, second = (np.zeros(words, dtype=np.int32) for _ in range(2))
    drafts = engine.tokenizer.encode("ab", add_special_tokens=False)
    matcher, reference = grammar.matcher(), grammar.matcher()
    matcher.fill_bitmask([], first, drafts)
    reference.fill_bitmask(drafts, second)
    assert _allowed(first) == _allowed(second) and 0 < len(_allowed(first)) < 100
    matcher.fill_bitmask([], first)  # the matcher consumed nothing
    grammar.matcher().fill_bitmask([], second)
    assert _allowed(first) == _allowed(second)
    refused = engine.tokenizer.encode("zz", add_special_tokens=False)
    matcher.fill_bitmask([], first, refused)
    assert (first == -1).all() and "the grammar refused" not in caplog.text
