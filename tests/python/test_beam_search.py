"""Engine.beam_search (vLLM's LLM.beam_search) against the same search run on transformers' logits
for the same weights: the same beams, in the same order, with the same scores; finished beams (an
end-of-sequence token) ranked with their length penalty; width 1 is greedy."""

from __future__ import annotations

import pytest
import torch

from kvserve import BeamSearchParams, Engine, SamplingParams
from tiny_models import tiny_hf_model

PROMPTS = ["The capital of France is", "Hi"]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Engine(str(tiny_model_dir("LlamaForCausalLM")), dtype="float32", kv_cache_memory_gb=0.01)


@pytest.fixture(scope="module")
def hf():
    return tiny_hf_model("LlamaForCausalLM")


def reference(hf, prompt_ids: list[int], width: int, steps: int, eos: set[int], length_penalty: float):
    """The search of kvserve/beam_search.py on transformers' log-probabilities: [(tokens, cum_logprob)]."""
    live, finished = [(list(prompt_ids), 0.0)], []
    for _ in range(steps):
        candidates = []
        for tokens, cum in live:
            with torch.no_grad():
                logprobs = hf(torch.tensor([tokens])).logits[0, -1].double().log_softmax(-1)
            top = logprobs.topk(2 * width)
            for logprob, token_id in zip(top.values.tolist(), top.indices.tolist()):
                (finished if token_id in eos else candidates).append((tokens + [token_id], cum + logprob))
        live = sorted(candidates, key=lambda beam: beam[1], reverse=True)[:width]

    def score(beam):
        tokens, cum = beam
        return cum / (len(tokens) - (tokens[-1] in eos)) ** length_penalty

    return sorted(finished + live, key=score, reverse=True)[:width]


@pytest.mark.parametrize("width, length_penalty", [(3, 1.0), (2, 0.5)])
def test_the_beams_equal_the_search_on_transformers_logits(engine, hf, width, length_penalty):
    outputs = engine.beam_search(PROMPTS, BeamSearchParams(beam_width=width, max_tokens=5,
                                                           length_penalty=length_penalty))
    for prompt, output in zip(PROMPTS, outputs):
        prompt_ids = engine.tokenizer.encode(prompt)
        expected = reference(hf, prompt_ids, width, 5, engine.eos_token_ids, length_penalty)
        assert [beam.tokens for beam in output.sequences] == [tokens for tokens, _ in expected]
        assert [beam.cum_logprob for beam in output.sequences] == pytest.approx([c for _, c in expected], abs=1e-4)
        for beam in output.sequences:
            own = beam.tokens[len(prompt_ids):]
            stopped = own[-1] in engine.eos_token_ids
            assert beam.finish_reason == ("stop" if stopped else "length") and len(beam.logprobs) == len(own)
            assert len(own) == 5 or stopped
            assert beam.text == engine.tokenizer.decode(own[:-1] if stopped else own)


def test_finished_beams_are_set_aside_and_ranked_with_the_rest(engine, hf, monkeypatch):
    """An end-of-sequence token (here a token the search meets early) ends a beam; its text leaves
    the token out unless include_stop_str_in_output."""
    [greedy] = engine.generate(PROMPTS[:1], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True),
                               use_tqdm=False)
    eos = engine.eos_token_ids | {greedy.outputs[0].token_ids[1]}
    monkeypatch.setattr(engine, "eos_token_ids", eos)
    params = BeamSearchParams(beam_width=3, max_tokens=4)
    [output] = engine.beam_search(PROMPTS[:1], params)
    prompt_ids = greedy.prompt_token_ids
    expected = reference(hf, prompt_ids, 3, 4, eos, 1.0)
    assert [beam.tokens for beam in output.sequences] == [tokens for tokens, _ in expected]
    stopped = [beam for beam in output.sequences if beam.finish_reason == "stop"]
    assert stopped and all(beam.tokens[-1] in eos for beam in stopped)
    assert stopped[0].text == engine.tokenizer.decode(stopped[0].tokens[len(prompt_ids):-1])
    [with_stop] = engine.beam_search(PROMPTS[:1], BeamSearchParams(beam_width=3, max_tokens=4,
                                                                   include_stop_str_in_output=True))
    kept = [beam for beam in with_stop.sequences if beam.finish_reason == "stop"]
    assert kept[0].text == engine.tokenizer.decode(kept[0].tokens[len(prompt_ids):])
    [ignoring] = engine.beam_search(PROMPTS[:1], BeamSearchParams(beam_width=3, max_tokens=4, ignore_eos=True))
    assert all(beam.finish_reason == "length" for beam in ignoring.sequences)


def test_width_one_is_greedy_and_bad_params_are_refused(engine):
    [beam] = engine.beam_search(PROMPTS[:1], BeamSearchParams(beam_width=1, max_tokens=6, ignore_eos=True))[0].sequences
    [greedy] = engine.generate(PROMPTS[:1], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True),
                               use_tqdm=False)
    assert beam.tokens[len(greedy.prompt_token_ids):] == greedy.outputs[0].token_ids
    for bad in (dict(beam_width=0, max_tokens=4), dict(beam_width=2, max_tokens=0), dict(beam_width=1.5, max_tokens=4)):
        with pytest.raises(ValueError, match="must be an integer >= 1"):
            BeamSearchParams(**bad)
    with pytest.raises(ValueError, match="more than max_logprobs 20"):  # 2 x 11 candidates a beam
        engine.beam_search(PROMPTS[:1], BeamSearchParams(beam_width=11, max_tokens=2))
    stats = engine.stats()
    assert not engine.has_unfinished_requests() and stats.num_free_blocks == stats.num_blocks - 1
