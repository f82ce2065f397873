"""The engine's overlapped steps, as on a GPU, taken on a CPU: "overlapped", the runner marked
asynchronous (step() applies the tokens of the step launched last time, launches the next one, then
runs the finished step's text side), and "ahead", async scheduling (step() schedules and launches
the next step before the tokens of the last one are applied; its decode rows take them from the
step in flight). The outputs must be those of the plain engine, whatever ends a request while the
next step is in flight (stop string, stop token, abort, a failure)."""

from __future__ import annotations

import dataclasses
import re
from types import SimpleNamespace

import pytest
import torch

import kvserve.engine as engine_module
from kvserve import Engine, RequestOutputKind, SamplingParams
from kvserve.engine import RESAMPLED_SHARE_LIMIT
from kvserve.model_runner import LaunchedStep
from kvserve.sampler import Sampler, SamplerOutput
from step_modes import STEP_MODES, count_retracts, set_step_mode
from test_engine import assert_no_blocks_held

PROMPTS = ["The capital of France is", "Hi", "ka lo mi ne ru sa ti vo ze str ing ion 7 42 and then some more"]


OVERLAPPED = [mode for mode in STEP_MODES if mode != "plain"]


def make_engine(directory, *, mode: str, **kwargs) -> Engine:
    return set_step_mode(Engine(str(directory), dtype="float32", kv_cache_memory_gb=0.01, device="cpu", **kwargs),
                         mode)


def start_short_and_long(engine: Engine):
    """Requests "short" (1 token) and "long" (4), their prefills launched; returns a check that the
    engine holds no block and still generates what it did before."""
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    [expected] = engine.generate(["Hi"], params, use_tqdm=False)
    engine.add_request("short", "Hello", SamplingParams(temperature=0, max_tokens=1, ignore_eos=True))
    engine.add_request("long", "Hi", params)
    engine.step()  # both prefills launched; "short" finishes when they are applied

    def goes_on():
        assert_no_blocks_held(engine)
        assert engine.generate(["Hi"], params, use_tqdm=False)[0].outputs[0].token_ids == expected.outputs[0].token_ids

    return goes_on


def summary(outputs):
    return [[(o.token_ids, o.text, o.finish_reason, o.stop_reason, o.logprobs, o.cumulative_logprob)
             for o in output.outputs] + [output.prompt_logprobs] for output in outputs]


@pytest.mark.parametrize("mode", OVERLAPPED)
def test_the_text_side_of_a_step_runs_after_the_next_step_is_launched(tiny_model_dir, mode):
    engine = make_engine(tiny_model_dir("LlamaForCausalLM"), mode=mode)
    launched, deferred = [], []
    launch = engine.runner.launch
    engine.runner.launch = lambda *args: launched.append(args[0].num_tokens) or deferred.append(
        args[0].num_deferred) or launch(*args)
    engine.add_request("a", "Hi", SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
    assert engine.step() == [] and engine.requests["a"].sequences[0].token_ids == []
    [first] = engine.step()
    assert len(first.outputs[0].token_ids) == 1 and launched[1:] == [1]  # the second step already launched
    assert len(engine.step()[0].outputs[0].token_ids) == 2
    [last] = engine.step()
    # Three steps, not four: scheduled ahead, a sequence certain to end by length is not run again.
    assert last.finished and len(last.outputs[0].token_ids) == 3 and len(launched) == 3
    # Scheduled ahead, the decodes take their input from the step in flight.
    assert deferred == ([0, 1, 1] if mode == "ahead" else [0, 0, 0])
    assert_no_blocks_held(engine)


@pytest.mark.parametrize("mode", OVERLAPPED)
def test_the_sampler_is_queued_after_the_text_side(tiny_model_dir, mode):
    """The finished step's Python side runs right after the next step's launch (the GPU's gap
    between steps holds no more than the scheduler's work), and the next step's sampler after it,
    as it reads the token ids that side extends."""
    engine = make_engine(tiny_model_dir("LlamaForCausalLM"), mode=mode)
    events = []
    launch, process, sampler = engine.runner.launch, engine._process, engine.runner.sampler
    engine.runner.launch = lambda *args: events.append("launch") or launch(*args)
    engine._process = lambda *args: events.append("process") or process(*args)
    engine.runner.sampler = lambda *args, **kwargs: events.append("sample") or sampler(*args, **kwargs)
    engine.generate(["Hi"], SamplingParams(temperature=0.8, top_p=0.9, max_tokens=3, ignore_eos=True), use_tqdm=False)
    # Two steps after the prefill, or more where a step scheduled ahead decoded a top-p token that
    # changed when it settled (its row retracted, the token decoded again).
    repeats = "{2}" if mode == "overlapped" else "{2,}"
    assert re.fullmatch(rf"launch sample( launch process sample){repeats} process", " ".join(events)), events


@pytest.mark.parametrize("mode", OVERLAPPED)
def test_overlapped_steps_give_the_plain_engines_outputs(tiny_model_dir, mode):
    plain, overlapped = (make_engine(tiny_model_dir("LlamaForCausalLM"), mode=m, max_num_batched_tokens=16)
                         for m in ("plain", mode))
    [free] = plain.generate(["Hi"], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True), use_tqdm=False)
    stop = free.outputs[0].text[8:10]
    params = [
        SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, repetition_penalty=1.5,
                       frequency_penalty=0.5),  # penalties read every token sampled so far
        SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, stop=stop),  # "Hi" ends on a stop string
        SamplingParams(temperature=0.8, seed=7, n=2, max_tokens=9, ignore_eos=True, logprobs=3, prompt_logprobs=2),
    ]
    for prompt_params in (params, params[::-1]):
        expected = plain.generate(PROMPTS, prompt_params, use_tqdm=False)
        assert summary(expected)[1][0][2] == "stop"
        assert summary(overlapped.generate(PROMPTS, prompt_params, use_tqdm=False)) == summary(expected)
    # A stop token: scheduled ahead, the row launched before it was known is dropped.
    stop_token = SamplingParams(temperature=0, max_tokens=20, stop_token_ids=[free.outputs[0].token_ids[6]])
    expected = plain.generate(["Hi"], stop_token, use_tqdm=False)
    assert expected[0].outputs[0].stop_reason == free.outputs[0].token_ids[6]
    assert summary(overlapped.generate(["Hi"], stop_token, use_tqdm=False)) == summary(expected)
    assert not overlapped.has_unfinished_requests()  # the step launched past the stop is closed
    # A token the bias makes first and the penalty forbids after: the step launched right after the
    # one that sampled it must already count it.
    biased = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, logit_bias={100: 50.0},
                            repetition_penalty=1000.0)
    [expected] = plain.generate([{"prompt_token_ids": [5, 6, 7]}], biased, use_tqdm=False)
    assert expected.outputs[0].token_ids[0] == 100 and 100 not in expected.outputs[0].token_ids[1:]
    assert summary(overlapped.generate([{"prompt_token_ids": [5, 6, 7]}], biased, use_tqdm=False)) == summary([expected])
    assert_no_blocks_held(overlapped)


def test_seeded_top_p_ahead_gives_the_plain_engines_tokens(tiny_model_dir, monkeypatch):
    """Top-p on the tiny model's flat distributions: rows settle late, and ahead the rows that
    decoded them are retracted (the share limit raised: no step settles first), their seeded
    generators untouched. One sequence, so that every step computes one row in both engines:
    top-p's kept set, and so the token, can turn on the logits' lowest bits, which depend on how
    many rows a step computes."""
    monkeypatch.setattr(engine_module, "RESAMPLED_SHARE_LIMIT", 1.0)
    plain, ahead = (make_engine(tiny_model_dir("LlamaForCausalLM"), mode=m) for m in ("plain", "ahead"))
    retracted = count_retracts(ahead)
    params = SamplingParams(temperature=0.8, top_p=0.9, seed=7, max_tokens=32, ignore_eos=True, logprobs=3)
    expected = plain.generate(["Hi"], params, use_tqdm=False)
    assert summary(ahead.generate(["Hi"], params, use_tqdm=False)) == summary(expected)
    assert retracted
    assert_no_blocks_held(ahead)


def test_a_steps_result_reads_the_copies_queued_with_its_sampler(tiny_model_dir, monkeypatch):
    """On a GPU a plain read (.cpu()) waits for every step queued before it, the step launched ahead
    of these tokens included: result() reads the copies its sampler queued (HostResult) and calls
    .cpu() only where a recheck failed. (On the CPU the copies are the tensors themselves; the GPU
    test in test_cuda_engine.py times it.)"""
    engine = make_engine(tiny_model_dir("LlamaForCausalLM"), mode="ahead")
    engine.add_request("a", "Hi", SamplingParams(temperature=0.8, seed=1, logprobs=2, prompt_logprobs=1,
                                                 max_tokens=3, ignore_eos=True))
    engine.step()
    reads = []
    cpu = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda tensor, *args, **kwargs: reads.append(tensor) or cpu(tensor))
    result = engine._launched.result()
    assert reads == [] and result.logprobs is not None and result.prompt_logprobs


class Bumped(SamplerOutput):
    """A greedy sampler's output whose settle() changes every token divisible by 3 into the next
    one: a stand-in for the rechecks that settle top-p rows late (its recheck flags mark those
    rows), which decides which token a row keeps by the token alone (whatever the batch), so that
    every way the engine steps must agree bit for bit."""

    @classmethod
    def of(cls, sampled_token_ids):
        out = cls(sampled_token_ids, None)
        out.rechecks = [SimpleNamespace(sufficient=sampled_token_ids % 3 != 0)]
        return out

    def settle(self) -> list[int]:
        if not self.rechecks:
            return []
        self.rechecks.clear()
        bumped = self.sampled_token_ids % 3 == 0
        self.sampled_token_ids[bumped] += 1
        return bumped.nonzero().squeeze(1).tolist()


@pytest.mark.parametrize("limit", [1.0, RESAMPLED_SHARE_LIMIT], ids=["retracted", "settled-first"])
def test_tokens_settled_late_give_the_plain_engines_outputs(tiny_model_dir, monkeypatch, limit):
    """Ahead, the next step decodes a token before it settles: a row that decoded a token that then
    changed is retracted (limit 1: never settle first), or, past the share limit, the step settles
    first. Either way the outputs are the plain engine's, bit for bit (greedy), and no block leaks."""
    monkeypatch.setattr(engine_module, "RESAMPLED_SHARE_LIMIT", limit)
    sampler = Sampler.__call__

    def bumped_sampler(self, logits, metadata, *, settle=True):
        out = Bumped.of(sampler(self, logits, metadata, settle=False).sampled_token_ids)
        if settle:
            out.settle()
        return out

    monkeypatch.setattr(Sampler, "__call__", bumped_sampler)
    settled_first = []
    settle = LaunchedStep.settle
    monkeypatch.setattr(LaunchedStep, "settle", lambda step: settled_first.append(step) or settle(step))
    params = [SamplingParams(temperature=0, max_tokens=12 + 3 * i, ignore_eos=True) for i in range(len(PROMPTS))]
    plain, ahead = (make_engine(tiny_model_dir("LlamaForCausalLM"), mode=m, max_num_batched_tokens=16)
                    for m in ("plain", "ahead"))
    retracted = count_retracts(ahead)
    expected = plain.generate(PROMPTS, params, use_tqdm=False)
    assert summary(ahead.generate(PROMPTS, params, use_tqdm=False)) == summary(expected)
    assert all(t % 3 != 0 for o in expected for t in o.outputs[0].token_ids)  # every token settled
    assert retracted if limit == 1.0 else settled_first
    assert_no_blocks_held(ahead)


def test_a_step_has_the_tokens_settled_first_where_many_of_them_change(tiny_model_dir, monkeypatch):
    """Flat distributions (a high temperature, top_p near 1): the first candidates often fall short,
    settling often changes the token, and a retract would cost a step each time; past
    RESAMPLED_SHARE_LIMIT the engine scheduled ahead has the last step settle before the next reads
    its tokens. The outputs stay the plain engine's (one sequence: one row in every step, as in
    the test above)."""
    plain, ahead = (make_engine(tiny_model_dir("LlamaForCausalLM"), mode=m) for m in ("plain", "ahead"))
    settled_first = []
    settle = LaunchedStep.settle
    monkeypatch.setattr(LaunchedStep, "settle", lambda step: settled_first.append(step) or settle(step))
    params = SamplingParams(temperature=3.0, top_p=0.99, seed=3, max_tokens=32, ignore_eos=True)
    expected = plain.generate(["Hi"], params, use_tqdm=False)
    assert summary(ahead.generate(["Hi"], params, use_tqdm=False)) == summary(expected)
    assert settled_first and ahead._resampled_share > RESAMPLED_SHARE_LIMIT
    assert_no_blocks_held(ahead)


@pytest.mark.parametrize("mode", OVERLAPPED)
def test_streamed_deltas_add_up_to_the_whole_output(tiny_model_dir, mode):
    engine = make_engine(tiny_model_dir("LlamaForCausalLM"), mode=mode)
    [whole] = engine.generate(["Hi"], SamplingParams(temperature=0, max_tokens=9, ignore_eos=True), use_tqdm=False)
    engine.add_request("d", "Hi", SamplingParams(temperature=0, max_tokens=9, ignore_eos=True,
                                                 output_kind=RequestOutputKind.DELTA))
    token_ids, text = [], ""
    while engine.has_unfinished_requests():
        for output in engine.step():
            token_ids += output.outputs[0].token_ids
            text += output.outputs[0].text
    assert token_ids == whole.outputs[0].token_ids and text == whole.outputs[0].text
    assert_no_blocks_held(engine)


def streamed(engine: Engine, prompt, params: SamplingParams):
    """One request's DELTA outputs added up: (token ids, text, finish reason)."""
    engine.add_request("streamed", prompt, dataclasses.replace(params, output_kind=RequestOutputKind.DELTA))
    token_ids, text, reason = [], "", None
    while engine.has_unfinished_requests():
        for output in engine.step():
            token_ids += output.outputs[0].token_ids
            text += output.outputs[0].text
            reason = output.outputs[0].finish_reason
    return token_ids, text, reason


@pytest.mark.parametrize("mode", STEP_MODES)
def test_the_stop_token_or_eos_that_ends_a_sequence_is_not_in_its_text(tiny_model_dir, mode):
    """As vLLM: the EOS or stop token stays in token_ids but its text is left out, unless
    include_stop_str_in_output; the same streamed (DELTA) and whole, however steps overlap."""
    engine = make_engine(tiny_model_dir("LlamaForCausalLM"), mode=mode)
    greedy = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, skip_special_tokens=False)
    [free] = engine.generate(["Hi"], greedy, use_tqdm=False)
    prompt_ids, ids = free.prompt_token_ids, free.outputs[0].token_ids
    stop_id = ids[4]

    def text_of(token_ids):  # the text of these output tokens after the prompt
        full = engine.tokenizer.decode(prompt_ids + token_ids, skip_special_tokens=False)
        return full[len(engine.tokenizer.decode(prompt_ids, skip_special_tokens=False)):]

    by_token = dataclasses.replace(greedy, stop_token_ids=[stop_id])
    # EOS (id 2) pushed to the top, held back for 3 tokens by min_tokens.
    by_eos = dataclasses.replace(greedy, ignore_eos=False, min_tokens=3, logit_bias={2: 100.0})
    for params, token_ids in ((by_token, ids[:ids.index(stop_id) + 1]), (by_eos, None)):
        for include in (False, True):
            params = dataclasses.replace(params, include_stop_str_in_output=include)
            [whole] = engine.generate(["Hi"], params, use_tqdm=False)
            out = whole.outputs[0]
            assert out.finish_reason == "stop" and out.token_ids == (token_ids or out.token_ids)
            assert out.token_ids[-1] == (stop_id if token_ids else 2) and len(out.token_ids) > 3
            shown = out.token_ids if include else out.token_ids[:-1]
            assert out.text == text_of(shown)
            assert text_of(out.token_ids[:-1]) != text_of(out.token_ids)  # the token shows some text
            assert streamed(engine, "Hi", params) == (out.token_ids, out.text, "stop")
    # Ended on EOS at once: no text; "<|im_end|>" only when asked for.
    params = dataclasses.replace(greedy, ignore_eos=False, logit_bias={2: 100.0})
    for include, text in ((False, ""), (True, "<|im_end|>")):
        params = dataclasses.replace(params, include_stop_str_in_output=include)
        [out] = engine.generate(["Hi"], params, use_tqdm=False)[0].outputs
        assert (out.token_ids, out.text) == ([2], text)
        assert streamed(engine, "Hi", params) == ([2], text, "stop")
    assert_no_blocks_held(engine)


@pytest.mark.parametrize("mode", OVERLAPPED)
def test_an_abort_while_a_step_is_in_flight_leaks_nothing(tiny_model_dir, mode):
    engine = make_engine(tiny_model_dir("LlamaForCausalLM"), mode=mode)
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    engine.add_request("gone", "Hi", params)
    engine.add_request("kept", "Hi there", params)
    engine.step()
    engine.step()
    engine.abort("gone")  # its next token is being computed
    finished = [o for _ in range(20) if engine.has_unfinished_requests() for o in engine.step() if o.finished]
    assert [o.request_id for o in finished] == ["kept"] and len(finished[0].outputs[0].token_ids) == 8
    assert_no_blocks_held(engine)


@pytest.mark.parametrize("mode", OVERLAPPED)
@pytest.mark.parametrize("where", ["launch", "result", "launch, then an abort", "sampler"])
def test_a_step_that_fails_ends_its_requests_and_the_engine_goes_on(tiny_model_dir, where, mode):
    """The step that fails ends its requests; the outputs of the step applied before it are not lost
    (unless their request is aborted before they are returned). Scheduled ahead, the step in flight
    when the next one fails to launch ends too: the failed step depends on its tokens. A sampler's
    error comes with the step's result, or, ahead, when the next step reads its tokens."""
    engine = make_engine(tiny_model_dir("LlamaForCausalLM"), mode=mode)
    goes_on = start_short_and_long(engine)

    launch = engine.runner.launch

    def failing(*args):
        launched = launch(*args)
        if where.startswith("launch"):
            raise RuntimeError("the device failed")
        if where == "sampler" and launched.sample_inputs is not None:
            launched.sample_inputs.sampler = lambda *args, **kwargs: (_ for _ in ()).throw(
                RuntimeError("the device failed"))
        elif where == "result":
            launched.result = lambda: (_ for _ in ()).throw(RuntimeError("the device failed"))
        return launched

    engine.runner.launch = failing
    with pytest.raises(RuntimeError, match="device failed"):
        while engine.has_unfinished_requests():
            engine.step()
    engine.runner.launch = launch
    if where == "launch" and mode == "ahead":  # the prefills were in flight: both requests ended
        assert engine.step() == [] and not engine.requests
    elif where == "launch":  # the step applied before the failed launch still reports "short"'s end
        [short] = engine.step()
        assert short.request_id == "short" and short.finished and len(short.outputs[0].token_ids) == 1
    elif where == "launch, then an abort":
        engine.abort("short")
    goes_on()


@pytest.mark.parametrize("mode", STEP_MODES)
def test_a_ctrl_c_in_the_text_side_loses_no_launched_step(tiny_model_dir, mode):
    """An interrupt while the finished step's text side runs: the step launched before it stays the
    engine's, applied by the next call, so the scheduler's open steps and the engine's agree; a
    request the interrupted step ended ("short") ends without its last output, held nowhere."""
    engine = make_engine(tiny_model_dir("LlamaForCausalLM"), mode=mode)
    goes_on = start_short_and_long(engine)
    process = engine._process

    def interrupted(*args):
        engine._process = process
        raise KeyboardInterrupt

    engine._process = interrupted
    with pytest.raises(KeyboardInterrupt):
        engine.step()
    while engine.has_unfinished_requests():
        engine.step()
    goes_on()


@pytest.mark.parametrize("mode", OVERLAPPED)
def test_a_ctrl_c_while_the_next_sampler_is_queued_ends_that_step_only(tiny_model_dir, mode):
    """An interrupt in the sampling that closes a step: the step launched before it ends with its
    requests (as a failed launch does), the outputs of the step just applied come with the next
    call, and the engine goes on."""
    engine = make_engine(tiny_model_dir("LlamaForCausalLM"), mode=mode)
    goes_on = start_short_and_long(engine)

    sampler = engine.runner.sampler

    def interrupted(*args, **kwargs):
        engine.runner.sampler = sampler
        raise KeyboardInterrupt

    engine.runner.sampler = interrupted
    with pytest.raises(KeyboardInterrupt):
        engine.step()  # applies the prefills, launches "long"'s next step, then samples it
    assert list(engine.requests) == []
    [short] = engine.step()
    assert short.request_id == "short" and short.finished and len(short.outputs[0].token_ids) == 1
    assert engine.step() == [] and not engine.has_unfinished_requests()
    goes_on()
