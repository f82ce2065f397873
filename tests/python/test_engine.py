"""Engine end to end on tiny random models: greedy ids equal transformers' exactly (float32), through
batching, chunked prefill, prefix-cache hits and preemption; seeds, n > 1, stop strings, aborts, and
no KV block leaks."""

from __future__ import annotations

import contextlib
import dataclasses
import threading

import pytest
import torch

from kvserve import LLM, Engine, RequestOutputKind, SamplingParams
from kvserve.kv_cache import kv_bytes_per_token
from kvserve.model_config import ModelConfig
from tiny_models import TINY_CONFIGS, tiny_hf_model

ARCHITECTURES = sorted(TINY_CONFIGS)
PROMPTS = ["The capital of France is", "Hi", "ka lo mi ne ru sa ti vo ze str ing ion 7 42 and then some more",
           "Café crème, 東京"]
GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)


def hf_greedy(hf_model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    out = hf_model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False,
                            eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt_ids):].tolist()


def assert_no_blocks_held(engine: Engine) -> None:
    stats = engine.stats()
    assert not engine.has_unfinished_requests() and not engine.requests
    assert stats.num_free_blocks == stats.num_blocks - 1, stats


@pytest.fixture(scope="module")
def hf_models():
    return {a: tiny_hf_model(a) for a in ARCHITECTURES}


def make_engine(directory, **kwargs) -> Engine:
    """The CPU engine (test_cuda_engine.py covers the GPU's)."""
    return Engine(str(directory), dtype="float32", kv_cache_memory_gb=kwargs.pop("kv_cache_memory_gb", 0.01),
                  device=kwargs.pop("device", "cpu"), **kwargs)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("mode", ["batched", "chunked-prefill", "long-prefill-threshold", "preemption"])
def test_greedy_ids_equal_transformers(tiny_model_dir, hf_models, architecture, mode):
    kwargs = {}
    if mode == "chunked-prefill":
        kwargs = dict(max_num_batched_tokens=5)
    elif mode == "long-prefill-threshold":  # every prompt in chunks of 3 tokens, the batch's in one step
        kwargs = dict(long_prefill_token_threshold=3)
    elif mode == "preemption":
        # 11 usable blocks of 4 tokens: the longest request fits (max_model_len 40), all four do not.
        config = ModelConfig.from_pretrained(tiny_model_dir(architecture))
        bytes_per_block = 4 * kv_bytes_per_token(config, torch.float32)
        kwargs = dict(block_size=4, max_model_len=40, kv_cache_memory_gb=12 * bytes_per_block / 2**30)
    engine = make_engine(tiny_model_dir(architecture), **kwargs)
    outputs = engine.generate(PROMPTS, GREEDY, use_tqdm=False)
    for output in outputs:
        expected = hf_greedy(hf_models[architecture], output.prompt_token_ids, GREEDY.max_tokens)
        assert output.outputs[0].token_ids == expected, (architecture, mode, output.prompt)
        assert output.outputs[0].finish_reason == "length"
    if mode == "preemption":
        assert engine.stats().num_preemptions > 0
    assert_no_blocks_held(engine)


def test_a_cuda_engines_step_takes_its_device_on_any_thread(tiny_model_dir, monkeypatch):
    """CUDA's current device is per thread: step() enters the engine's device, so that a step made on
    another thread than the engine's builder (a server's engine thread) launches there, its events,
    streams and graph replays included (a recording stand-in for torch.cuda.device here)."""
    engine = make_engine(tiny_model_dir(ARCHITECTURES[0]))
    engine.add_request("a", {"prompt_token_ids": [1, 2, 3]}, GREEDY)
    entered = []

    @contextlib.contextmanager
    def device(d):
        entered.append((d, threading.current_thread().name))
        yield

    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(engine, "device", torch.device("cuda", 1))
    thread = threading.Thread(target=engine.step, name="engine-thread")
    thread.start()
    thread.join()
    assert entered == [(torch.device("cuda", 1), "engine-thread")]


def test_prefix_cache_hits_give_the_same_ids(tiny_model_dir, hf_models):
    engine = make_engine(tiny_model_dir("LlamaForCausalLM"), block_size=4)
    shared = "ka lo mi ne ru sa ti vo ze str ing ion 7 42 "
    prompts = [shared + "alpha", shared + "beta gamma"]
    first = engine.generate(prompts[:1], GREEDY, use_tqdm=False)
    second = engine.generate(prompts, GREEDY, use_tqdm=False)
    assert engine.stats().prefix_cache_hits > 0
    assert second[0].outputs[0].token_ids == first[0].outputs[0].token_ids
    for output in second:
        expected = hf_greedy(hf_models["LlamaForCausalLM"], output.prompt_token_ids, GREEDY.max_tokens)
        assert output.outputs[0].token_ids == expected
    assert_no_blocks_held(engine)


def test_first_step_logprobs_match_transformers(tiny_model_dir, hf_models):
    engine = make_engine(tiny_model_dir("Qwen3ForCausalLM"))
    params = SamplingParams(temperature=0, max_tokens=1, logprobs=5, prompt_logprobs=3)
    [output] = engine.generate(["The capital of France is"], params, use_tqdm=False)
    ids = output.prompt_token_ids
    with torch.no_grad():
        logits = hf_models["Qwen3ForCausalLM"](torch.tensor([ids])).logits[0].double().log_softmax(-1)
    [chosen] = output.outputs[0].logprobs
    for token_id, logprob in chosen.items():
        assert logprob.logprob == pytest.approx(logits[-1, token_id].item(), rel=1e-4, abs=1e-5)
    assert output.prompt_logprobs[0] is None and len(output.prompt_logprobs) == len(ids)
    for position in range(1, len(ids)):
        actual = output.prompt_logprobs[position][ids[position]]
        assert actual.logprob == pytest.approx(logits[position - 1, ids[position]].item(), rel=1e-4, abs=1e-5)
        assert actual.rank == int((logits[position - 1] > logits[position - 1, ids[position]]).sum()) + 1


def test_max_logprobs_bounds_what_a_request_asks_and_minus_one_is_the_vocabulary(tiny_model_dir, hf_models):
    """vLLM's max_logprobs (default 20) and logprobs = -1; the whole vocabulary's logprobs equal
    transformers' at every position."""
    engine = make_engine(tiny_model_dir("LlamaForCausalLM"))
    for params in (SamplingParams(logprobs=21), SamplingParams(prompt_logprobs=-1)):
        with pytest.raises(ValueError, match="more than max_logprobs 20"):
            engine.generate(["Hi"], params, use_tqdm=False)
    assert_no_blocks_held(engine)
    with pytest.raises(ValueError, match="max_logprobs must be an integer >= 0, or -1"):
        make_engine(tiny_model_dir("LlamaForCausalLM"), max_logprobs=-2)
    engine = make_engine(tiny_model_dir("LlamaForCausalLM"), max_logprobs=-1)
    vocab = engine.model_config.vocab_size
    params = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True, logprobs=-1, prompt_logprobs=-1)
    [output] = engine.generate(["The capital"], params, use_tqdm=False)
    ids = output.prompt_token_ids + output.outputs[0].token_ids
    with torch.no_grad():
        logits = hf_models["LlamaForCausalLM"](torch.tensor([ids])).logits[0].double().log_softmax(-1)
    entries = output.prompt_logprobs[1:] + output.outputs[0].logprobs
    assert len(entries) == len(ids) - 1
    for position, entry in enumerate(entries):
        assert len(entry) == vocab
        got = torch.tensor([entry[t].logprob for t in range(vocab)], dtype=torch.float64)
        torch.testing.assert_close(got, logits[position], rtol=1e-4, atol=1e-5)


def test_seed_gives_the_same_text_whatever_the_batch(tiny_model_dir):
    engine = make_engine(tiny_model_dir("LlamaForCausalLM"))
    seeded = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=12, seed=1234, ignore_eos=True)
    alone = engine.generate(["Hi"], seeded, use_tqdm=False)[0].outputs[0]
    others = SamplingParams(temperature=1.0, max_tokens=7, ignore_eos=True)
    batch = engine.generate(PROMPTS + ["Hi"], [others] * len(PROMPTS) + [seeded], use_tqdm=False)
    assert batch[-1].outputs[0].token_ids == alone.token_ids
    assert batch[-1].outputs[0].text == alone.text


def test_n_samples_differ_and_share_the_prompt(tiny_model_dir):
    engine = make_engine(tiny_model_dir("LlamaForCausalLM"))
    [output] = engine.generate(["Hi there"], SamplingParams(n=4, temperature=1.0, max_tokens=8, seed=7,
                                                             ignore_eos=True), use_tqdm=False)
    samples = [tuple(o.token_ids) for o in output.outputs]
    assert [o.index for o in output.outputs] == [0, 1, 2, 3]
    assert len(set(samples)) == 4 and all(len(s) == 8 for s in samples)
    assert_no_blocks_held(engine)


def test_stop_string_ends_the_text_before_it(tiny_model_dir):
    engine = make_engine(tiny_model_dir("LlamaForCausalLM"))
    [free] = engine.generate(["Hi"], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True), use_tqdm=False)
    text = free.outputs[0].text
    stop = text[len(text) // 2: len(text) // 2 + 2]
    cut = text.index(stop)
    [stopped] = engine.generate(["Hi"], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, stop=stop),
                                use_tqdm=False)
    out = stopped.outputs[0]
    assert out.text == text[:cut] and out.finish_reason == "stop" and out.stop_reason == stop
    assert len(out.token_ids) < 20
    [kept] = engine.generate(["Hi"], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, stop=stop,
                                                    include_stop_str_in_output=True), use_tqdm=False)
    assert kept.outputs[0].text == text[:cut + len(stop)]
    assert_no_blocks_held(engine)


def test_stop_token_and_eos(tiny_model_dir):
    engine = make_engine(tiny_model_dir("LlamaForCausalLM"))
    [free] = engine.generate(["Hi"], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True), use_tqdm=False)
    ids = free.outputs[0].token_ids
    [stopped] = engine.generate(["Hi"], SamplingParams(temperature=0, max_tokens=10, stop_token_ids=[ids[3]],
                                                       ignore_eos=True), use_tqdm=False)
    out = stopped.outputs[0]
    first = ids.index(ids[3])
    assert out.token_ids == ids[:first + 1] and out.finish_reason == "stop" and out.stop_reason == ids[3]
    # min_tokens masks the stop token until reached.
    [late] = engine.generate(["Hi"], SamplingParams(temperature=0, max_tokens=10, stop_token_ids=[ids[3]],
                                                    min_tokens=first + 1, ignore_eos=True), use_tqdm=False)
    assert len(late.outputs[0].token_ids) > first + 1


def test_allowed_token_ids_are_the_only_tokens_generated(tiny_model_dir):
    engine = make_engine(tiny_model_dir("LlamaForCausalLM"))
    [free] = engine.generate(["Hi"], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True), use_tqdm=False)
    # Without the greedy choice of the first step, greedy takes another allowed token.
    allowed = [t for t in range(40, 60) if t != free.outputs[0].token_ids[0]]
    greedy, seeded = engine.generate(
        ["Hi", "Hi"], [SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, allowed_token_ids=allowed),
                       SamplingParams(temperature=1.0, top_p=0.95, seed=5, max_tokens=12, ignore_eos=True,
                                      allowed_token_ids=allowed, logprobs=1)], use_tqdm=False)
    assert set(greedy.outputs[0].token_ids) <= set(allowed) and len(greedy.outputs[0].token_ids) == 6
    assert set(seeded.outputs[0].token_ids) <= set(allowed) and len(seeded.outputs[0].token_ids) == 12
    with pytest.raises(ValueError, match="allowed_token_ids has token ids"):
        engine.generate(["Hi"], SamplingParams(allowed_token_ids=[1, 10**6]), use_tqdm=False)
    assert_no_blocks_held(engine)


def test_truncate_prompt_tokens_keeps_the_last_tokens(tiny_model_dir):
    engine = make_engine(tiny_model_dir("LlamaForCausalLM"), max_model_len=32)
    long_text = PROMPTS[2]
    long_ids = engine.tokenizer.encode(long_text)
    assert len(long_ids) > 8
    [short] = engine.generate([{"prompt_token_ids": long_ids[-5:]}], GREEDY, use_tqdm=False)
    [cut] = engine.generate([long_text], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True,
                                                         truncate_prompt_tokens=5), use_tqdm=False)
    assert cut.prompt_token_ids == long_ids[-5:] and cut.prompt == long_text  # the text as given, as vLLM
    assert cut.outputs[0].token_ids == short.outputs[0].token_ids
    # -1 keeps what the context holds with room for one output token: 31 of max_model_len 32.
    too_long = (long_ids * 4)[:40]
    with pytest.raises(ValueError, match="prompt of 40 tokens"):
        engine.generate([{"prompt_token_ids": too_long}], GREEDY, use_tqdm=False)
    [fitted] = engine.generate([{"prompt_token_ids": too_long}], SamplingParams(truncate_prompt_tokens=-1),
                               use_tqdm=False)
    assert fitted.prompt_token_ids == too_long[-31:] and len(fitted.outputs[0].token_ids) == 1
    [whole] = engine.generate([{"prompt_token_ids": long_ids}], SamplingParams(truncate_prompt_tokens=-1),
                              use_tqdm=False)
    assert whole.prompt_token_ids == long_ids
    assert_no_blocks_held(engine)


def test_streaming_deltas_add_up_and_abort_frees_blocks(tiny_model_dir):
    engine = make_engine(tiny_model_dir("LlamaForCausalLM"))
    engine.add_request("a", "Hi", SamplingParams(temperature=0, max_tokens=9, ignore_eos=True,
                                                 output_kind=RequestOutputKind.DELTA))
    engine.add_request("b", "Hello", SamplingParams(temperature=0, max_tokens=50, ignore_eos=True))
    text, token_ids, steps = "", [], 0
    while "a" in engine.requests:
        for output in engine.step():
            if output.request_id == "a":
                text += output.outputs[0].text
                token_ids += output.outputs[0].token_ids
        steps += 1
    [whole] = engine.generate(["Hi"], SamplingParams(temperature=0, max_tokens=9, ignore_eos=True), use_tqdm=False)
    assert token_ids == whole.outputs[0].token_ids and text == whole.outputs[0].text
    assert engine.stats().num_free_blocks < engine.stats().num_blocks - 1  # "b" still holds blocks
    engine.abort("b")
    engine.abort(["b", "never-seen"])  # finished or unknown ids are ignored
    assert_no_blocks_held(engine)


def test_a_failed_step_ends_its_batch_and_the_engine_goes_on(tiny_model_dir, monkeypatch):
    engine = make_engine(tiny_model_dir("LlamaForCausalLM"))
    [expected] = engine.generate(["Hi"], GREEDY, use_tqdm=False)
    launch = engine.runner.launch

    def interrupted(*args):  # Ctrl-C in the model's forward pass
        raise KeyboardInterrupt

    monkeypatch.setattr(engine.runner, "launch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        engine.generate(["Hi", "Hello"], GREEDY, use_tqdm=False)
    assert_no_blocks_held(engine)
    monkeypatch.setattr(engine.runner, "launch", launch)
    assert engine.generate(["Hi"], GREEDY, use_tqdm=False)[0].outputs[0].token_ids == expected.outputs[0].token_ids


def test_a_failed_step_leaves_no_prefix_cache_hits_on_blocks_it_never_wrote(tiny_model_dir, monkeypatch):
    # The scheduler registers a prompt's full blocks when it schedules them; a step that fails
    # before writing them must not leave them as hits for the next request with that prefix.
    engine = make_engine(tiny_model_dir("LlamaForCausalLM"))
    prompt = {"prompt_token_ids": list(range(3, 3 + 40))}
    [expected] = make_engine(tiny_model_dir("LlamaForCausalLM")).generate([prompt], GREEDY, use_tqdm=False)

    def interrupted(*args):
        raise RuntimeError("the device failed")

    launch = engine.runner.launch
    monkeypatch.setattr(engine.runner, "launch", interrupted)
    with pytest.raises(RuntimeError, match="device failed"):
        engine.generate([prompt], GREEDY, use_tqdm=False)
    monkeypatch.setattr(engine.runner, "launch", launch)
    [again] = engine.generate([prompt], GREEDY, use_tqdm=False)
    assert again.outputs[0].token_ids == expected.outputs[0].token_ids
    assert engine.stats().prefix_cache_hits == 0
    assert_no_blocks_held(engine)


def test_bad_input_is_a_clear_error_and_leaks_nothing(tiny_model_dir):
    engine = make_engine(tiny_model_dir("LlamaForCausalLM"), max_model_len=32)
    with pytest.raises(ValueError, match="max_model_len"):
        engine.generate(["Hi", "word " * 40], GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="empty"):
        engine.generate([{"prompt_token_ids": []}], GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="vocabulary"):
        engine.generate([{"prompt_token_ids": [1, 5000]}], GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="one per prompt"):
        engine.generate(["a", "b"], [GREEDY], use_tqdm=False)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    engine.add_request("x", "Hi", GREEDY)
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("x", "Hi", GREEDY)
    engine.abort("x")
    assert_no_blocks_held(engine)
    with pytest.raises(ValueError, match="max_model_len"):
        make_engine(tiny_model_dir("LlamaForCausalLM"), max_model_len=10**6)


def test_a_request_that_fails_to_add_leaves_nothing_behind(tiny_model_dir):
    engine = make_engine(tiny_model_dir("LlamaForCausalLM"))
    [expected] = engine.generate(["Hi"], GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match=r"seed must be in \[-2\*\*63, 2\*\*63 - 1 - \(n - 1\)\].*"
                                         r"got 18446744073709551616"):
        engine.generate(["Hi"], SamplingParams(seed=2**64, max_tokens=3), use_tqdm=False)
    # A failure while the request's Python side is built (here a seed set past the validation):
    # the scheduler must not keep a request that Python never recorded.
    params = SamplingParams(seed=1, max_tokens=3)
    params.seed = 2**64
    with pytest.raises((ValueError, RuntimeError, OverflowError)):
        engine.add_request("bad", "Hi", params)
    assert not engine.scheduler.has_unfinished_requests()
    assert_no_blocks_held(engine)
    assert engine.generate(["Hi"], GREEDY, use_tqdm=False)[0].outputs[0].token_ids == expected.outputs[0].token_ids
    # The extreme seeds torch takes, sample i of n seeded with seed + i.
    for seed, n in ((-(2**63), 1), (2**63 - 2, 2)):
        params = SamplingParams(seed=seed, n=n, max_tokens=3, ignore_eos=True)
        assert [len(o.token_ids) for o in engine.generate(["Hi"], params, use_tqdm=False)[0].outputs] == [3] * n
    assert_no_blocks_held(engine)


def test_limits_past_int32_are_capped_or_a_clear_error(tiny_model_dir):
    engine = make_engine(tiny_model_dir("LlamaForCausalLM"), max_model_len=32, scheduling_policy="priority")
    # As vLLM: max_tokens is capped at the room max_model_len leaves (min_tokens with it).
    for max_tokens, min_tokens in ((2**31, 0), (2**31 - 1, 0), (2**40, 2**35), (None, 2**31)):
        params = SamplingParams(temperature=0, max_tokens=max_tokens, min_tokens=min_tokens)
        [output] = engine.generate([{"prompt_token_ids": [5, 6, 7]}], params, use_tqdm=False)
        assert len(output.outputs[0].token_ids) == 32 - 3 and output.outputs[0].finish_reason == "length"
    with pytest.raises(ValueError, match=r"n must be in \[1, 4096\] \(samples of one request; .*\), got 2147483648"):
        engine.generate(["Hi"], SamplingParams(n=2**31), use_tqdm=False)
    for priority in (2**31, -(2**31) - 1, 1.5):
        with pytest.raises(ValueError,
                           match=rf"priority must be an integer in \[-2\*\*31, 2\*\*31 - 1\], got {priority}"):
            engine.add_request("p", "Hi", GREEDY, priority=priority)
    for priority in (2**31 - 1, -(2**31)):
        engine.add_request(f"p{priority}", "Hi", GREEDY, priority=priority)
    while engine.has_unfinished_requests():
        engine.step()
    assert_no_blocks_held(engine)


def test_the_priority_policy_runs_lower_priorities_first(tiny_model_dir):
    """scheduling_policy "priority" (vLLM's): one sequence a step, the waiting queue taken by priority, then
    by arrival; "fcfs", the default, refuses priorities."""
    engine = make_engine(tiny_model_dir("LlamaForCausalLM"), max_num_seqs=1, scheduling_policy="priority")
    params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    outputs = engine.generate(["a", "b", "c", "d"], params, priority=[3, -1, 0, -1], use_tqdm=False)
    assert sorted(range(4), key=lambda i: outputs[i].metrics.first_scheduled_time) == [1, 3, 2, 0]
    assert_no_blocks_held(engine)
    with pytest.raises(ValueError, match="priority: expected one per prompt"):
        engine.generate(["a", "b"], params, priority=[1], use_tqdm=False)
    fcfs = make_engine(tiny_model_dir("LlamaForCausalLM"))
    with pytest.raises(ValueError, match="priority 2 needs scheduling_policy 'priority'"):
        fcfs.generate(["a"], params, priority=[2], use_tqdm=False)
    assert_no_blocks_held(fcfs)
    with pytest.raises(ValueError, match="scheduling_policy must be one of"):
        make_engine(tiny_model_dir("LlamaForCausalLM"), scheduling_policy="lifo")


@pytest.mark.parametrize("block_size", [0, -4, 24, 512, 2**31, 16.0, True])
def test_a_bad_block_size_is_a_clear_error(tiny_model_dir, block_size):
    with pytest.raises(ValueError, match=rf"block_size must be a power of two in \[1, 256\], got {block_size}"):
        make_engine(tiny_model_dir("LlamaForCausalLM"), block_size=block_size)


def test_without_a_tokenizer_stop_strings_are_refused(tiny_model_dir):
    engine = make_engine(tiny_model_dir("LlamaForCausalLM"), skip_tokenizer_init=True)
    prompt = {"prompt_token_ids": [5, 6, 7]}
    with pytest.raises(ValueError, match=r"stop strings \['ab'\] need the text.*skip_tokenizer_init=True"):
        engine.add_request("a", prompt, SamplingParams(stop="ab"))
    assert_no_blocks_held(engine)
    [output] = engine.generate([prompt], GREEDY, use_tqdm=False)
    assert len(output.outputs[0].token_ids) == GREEDY.max_tokens and output.outputs[0].text == ""


def test_detokenize_false_gives_the_same_tokens_without_text(tiny_model_dir):
    engine = make_engine(tiny_model_dir("LlamaForCausalLM"))
    with_text, without = (engine.generate(["Hello there"], dataclasses.replace(GREEDY, detokenize=detokenize),
                                          use_tqdm=False)[0].outputs[0] for detokenize in (True, False))
    assert without.token_ids == with_text.token_ids and with_text.text and without.text == ""
    with pytest.raises(ValueError, match=r"stop strings \['ab'\] need the text, which detokenize=False leaves out"):
        engine.add_request("a", "Hi", SamplingParams(stop="ab", detokenize=False))
    with pytest.raises(ValueError, match=r"detokenize must be"):
        SamplingParams(detokenize="no")
    assert_no_blocks_held(engine)


def test_a_prompt_ending_in_an_unfinished_character_is_not_shown_again(tiny_model_dir):
    engine = make_engine(tiny_model_dir("LlamaForCausalLM"))
    tokenizer = engine.tokenizer
    prompt = tokenizer.encode("Hi") + [tokenizer.decode_tables.pieces.index(b"\xe6")]  # a lone lead byte
    [output] = engine.generate([{"prompt_token_ids": prompt}], GREEDY, use_tqdm=False)
    shown = tokenizer.decode(prompt)
    full = tokenizer.decode(prompt + output.outputs[0].token_ids)
    assert shown == "Hi\ufffd" and full.startswith(shown)  # the greedy output leaves it unfinished
    assert output.outputs[0].text == full[len(shown):]


def test_cumulative_outputs_are_snapshots(tiny_model_dir):
    # Each output holds what was known then: later steps must not change an output handed out.
    engine = make_engine(tiny_model_dir("LlamaForCausalLM"))
    engine.add_request("a", "Hi", SamplingParams(temperature=0, max_tokens=5, ignore_eos=True, logprobs=1))
    outputs = []
    while engine.has_unfinished_requests():
        outputs += [(output, [len(o.token_ids) for o in output.outputs], [len(o.logprobs) for o in output.outputs])
                    for output in engine.step()]
    assert [token_counts for _, token_counts, _ in outputs] == [[1], [2], [3], [4], [5]]
    for output, token_counts, logprob_counts in outputs:
        assert [len(o.token_ids) for o in output.outputs] == token_counts
        assert [len(o.logprobs) for o in output.outputs] == logprob_counts == token_counts


def test_chat_applies_the_template_and_llm_is_engine(tiny_model_dir):
    assert LLM is Engine
    engine = make_engine(tiny_model_dir("LlamaForCausalLM"))
    conversation = [{"role": "user", "content": "Hi"}]
    [reply] = engine.chat(conversation, GREEDY, use_tqdm=False)
    prompt = engine.tokenizer.apply_chat_template(conversation, add_generation_prompt=True)
    assert reply.prompt == prompt and prompt.endswith("<|im_start|>assistant\n")
    assert reply.prompt_token_ids == engine.tokenizer.encode(prompt, add_special_tokens=False)
    replies = engine.chat([conversation, conversation + [{"role": "assistant", "content": "Yo"},
                                                          {"role": "user", "content": "More"}]], GREEDY,
                          use_tqdm=False)
    assert replies[0].outputs[0].token_ids == reply.outputs[0].token_ids and len(replies) == 2
    # tools reach the template as its `tools`; chat_template_kwargs win over them, as in vLLM.
    template = ("{% for t in tools %}[{{ t.function.name }}]{% endfor %}"
                "{% for m in messages %}{{ m.content }}{% endfor %}")
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    [with_tools] = engine.chat(conversation, GREEDY, use_tqdm=False, chat_template=template, tools=tools)
    assert with_tools.prompt == "[get_weather]Hi"
    [overridden] = engine.chat(conversation, GREEDY, use_tqdm=False, chat_template=template, tools=tools,
                               chat_template_kwargs={"tools": []})
    assert overridden.prompt == "Hi"


def test_generate_shows_a_progress_bar(tiny_model_dir, capsys):
    engine = make_engine(tiny_model_dir("LlamaForCausalLM"))
    engine.generate(["Hi", "Hello"], GREEDY)
    err = capsys.readouterr().err
    assert "Processed prompts" in err and "2/2" in err and "tok/s" in err


def test_the_models_other_end_ids_report_their_stop_reason(tiny_model_dir, tmp_path):
    """generation_config.json may list end-of-sequence ids besides the tokenizer's (Llama 3's
    <|eom_id|>): a sequence one of them ends reports it as its stop_reason, as vLLM's do."""
    import json
    import shutil

    directory = tmp_path / "two-ends"
    shutil.copytree(tiny_model_dir("LlamaForCausalLM"), directory)
    [free] = make_engine(directory).generate(["Hi"], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True),
                                             use_tqdm=False)
    other = free.outputs[0].token_ids[2]
    config = json.loads((directory / "generation_config.json").read_text())
    config["eos_token_id"] = [config["eos_token_id"], other]
    (directory / "generation_config.json").write_text(json.dumps(config))
    engine = make_engine(directory)
    params = SamplingParams(temperature=0, max_tokens=10)
    [out] = engine.generate(["Hi"], params, use_tqdm=False)
    assert out.outputs[0].finish_reason == "stop" and out.outputs[0].stop_reason == other
    assert out.outputs[0].token_ids[-1] == other and params.stop_token_ids == []  # the caller's params untouched
    [ignored] = engine.generate(["Hi"], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True), use_tqdm=False)
    assert ignored.outputs[0].token_ids == free.outputs[0].token_ids
