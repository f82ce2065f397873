"""A request of more samples than a step holds (n > max_num_seqs) runs as several (kvserve.fan_out):
the same samples, seeded, as one request of them all on an engine with room for them; each output
kind joins its children's outputs under the parent's id; aborting it, or a child, frees every block."""

from __future__ import annotations

import dataclasses

import pytest

from kvserve import RequestOutputKind, SamplingParams
from test_engine import assert_no_blocks_held, make_engine

SEEDED = SamplingParams(n=7, temperature=1.0, seed=11, max_tokens=6, ignore_eos=True, logprobs=2)


def _samples(output):
    return [(o.index, o.token_ids, o.finish_reason) for o in output.outputs]


@pytest.fixture(scope="module")
def engines(tiny_model_dir):
    directory = tiny_model_dir("LlamaForCausalLM")
    return make_engine(directory, max_num_seqs=3), make_engine(directory, max_num_seqs=8)


def test_fanned_out_samples_equal_one_requests(engines):
    small, roomy = engines
    [fanned] = small.generate(["The capital of France is"], SEEDED, use_tqdm=False)
    [whole] = roomy.generate(["The capital of France is"], SEEDED, use_tqdm=False)
    assert [o.index for o in fanned.outputs] == list(range(7))
    assert _samples(fanned) == _samples(whole) and fanned.finished
    assert [len(o.logprobs) for o in fanned.outputs] == [6] * 7
    assert fanned.metrics.finished_time >= fanned.metrics.first_token_time >= fanned.metrics.arrival_time
    assert_no_blocks_held(small)


@pytest.mark.parametrize("kind", [RequestOutputKind.DELTA, RequestOutputKind.CUMULATIVE])
def test_each_output_kind_reports_under_the_parents_id(engines, kind):
    small, roomy = engines
    [whole] = roomy.generate(["Hi there"], SEEDED, use_tqdm=False)
    small.add_request("parent", "Hi there", dataclasses.replace(SEEDED, output_kind=kind))
    tokens: dict[int, list[int]] = {}
    finished = []
    while small.has_unfinished_requests():
        for output in small.step():
            assert output.request_id == "parent"
            finished.append(output.finished)
            for sample in output.outputs:
                if kind is RequestOutputKind.DELTA:
                    tokens.setdefault(sample.index, []).extend(sample.token_ids)
                else:
                    tokens[sample.index] = list(sample.token_ids)
    assert finished[-1] and not any(finished[:-1])
    assert [tokens[i] for i in range(7)] == [o.token_ids for o in whole.outputs]
    assert_no_blocks_held(small)


def test_aborting_the_parent_or_a_child_ends_it_whole(engines):
    small, _ = engines
    for target in ("req", "req/1"):
        small.add_request("req", "Hello", SamplingParams(n=7, max_tokens=50, ignore_eos=True))
        assert small.has_request("req") and small.has_request("req/2")
        small.step()
        small.abort(target)
        assert not small.has_request("req") and not small.has_request("req/0")
        assert small.step() == []
        assert_no_blocks_held(small)


def test_a_childs_id_in_use_is_refused_and_nothing_is_left(engines):
    small, _ = engines
    for taken in ("x/0", "x/1"):
        small.add_request(taken, "Hello", SamplingParams(max_tokens=2))
        with pytest.raises(ValueError, match=rf"run as requests \['x/0', 'x/1', 'x/2'\], and '{taken}' is in use"):
            small.add_request("x", "Hello", SamplingParams(n=7, max_tokens=2))
        assert set(small.requests) == {taken}
        small.abort(taken)
    assert_no_blocks_held(small)


def test_a_ctrl_c_as_a_child_ends_ends_the_request_whole(engines):
    """An interrupt in the text side of the step that ended a child: that child ends without its
    last outputs, so the request cannot finish; it ends whole, its other child's blocks freed."""
    small, _ = engines
    small.add_request("p", "Hello", SamplingParams(n=4, max_tokens=2, ignore_eos=True))  # children of 3 and 1
    process = small._process

    def interrupted(applied):
        if any(update.request_id == "p/0" and update.finish_reason for update in applied.updates):
            small._process = process
            raise KeyboardInterrupt
        return process(applied)

    small._process = interrupted
    with pytest.raises(KeyboardInterrupt):
        while small.has_unfinished_requests():
            small.step()
    while small.has_unfinished_requests():
        small.step()
    assert not small.has_request("p") and not small.request_ids()
    assert_no_blocks_held(small)
