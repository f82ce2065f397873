"""The scheduler through kvserve._C: zero-copy arrays with documented dtypes and shapes, parallel
sampling, ValueError on bad input, and a seeded randomized workload checked step by step."""

import random
import warnings

import numpy as np
import pytest
import torch

from kvserve import _C


def make(num_blocks=16, block_size=4, max_model_len=64, **kwargs):
    config = _C.SchedulerConfig(num_blocks=num_blocks, block_size=block_size, max_model_len=max_model_len, **kwargs)
    return _C.Scheduler(config)


def test_prefill_then_decode_arrays_have_documented_dtypes_shapes_and_values():
    s = make()
    s.add_request("a", [10, 11, 12, 13, 14, 15], max_tokens=2)
    out = s.schedule()
    expected = {
        "input_ids": (np.int32, [10, 11, 12, 13, 14, 15]),
        "positions": (np.int64, [0, 1, 2, 3, 4, 5]),
        "slot_mapping": (np.int64, [4, 5, 6, 7, 8, 9]),
        "query_start_loc": (np.int32, [0, 6]),
        "seq_lens": (np.int32, [6]),
        "logits_indices": (np.int64, [5]),
        "sample_indices": (np.int32, [0]),
        "sampled_sample_indices": (np.int32, [0]),
    }
    for name, (dtype, values) in expected.items():
        array = getattr(out, name)
        assert array.dtype == dtype, name
        assert array.tolist() == values, name
    assert out.block_table.dtype == np.int32 and out.block_table.tolist() == [[1, 2]]
    assert out.blocks_to_copy.dtype == np.int64 and out.blocks_to_copy.shape == (0, 2)
    assert (out.num_reqs, out.num_tokens, out.num_sampled, out.max_blocks_per_req) == (1, 6, 1, 2)
    assert out.req_ids == ["a"] and out.sampled_req_ids == ["a"]

    [update] = s.update_from_output(np.array([40], dtype=np.int32))
    assert tuple(update) == ("a", 0, [40], None)
    decode = s.schedule()
    assert decode.input_ids.tolist() == [40] and decode.positions.tolist() == [6]
    [last] = s.update_from_output(np.array([41], dtype=np.int32))
    request_id, sample_index, new_token_ids, finish_reason = last
    assert (request_id, sample_index, new_token_ids, finish_reason) == ("a", 0, [41], "length")
    assert last.stop_token_id is None
    assert not s.has_unfinished_requests()
    assert s.stats().num_free_blocks == 15


def test_arrays_are_views_of_buffers_reused_across_steps():
    s = make(max_model_len=32)
    s.add_request("a", list(range(1, 9)), max_tokens=4)
    out = s.schedule()
    first = out.input_ids
    assert np.shares_memory(first, out.input_ids)
    address = first.__array_interface__["data"][0]
    s.update_from_output(np.array([3], dtype=np.int32))
    assert s.schedule().input_ids.__array_interface__["data"][0] == address
    # Writable views: torch wraps them without a copy and without a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tensor = torch.from_numpy(out.slot_mapping)
    assert tensor.data_ptr() == out.slot_mapping.__array_interface__["data"][0]


@pytest.mark.parametrize(
    "prompt",
    [
        [5, 6, 7],
        (5, 6, 7),
        [np.int64(5), np.int32(6), 7],
        np.array([5, 6, 7], dtype=np.int32),
        np.array([5, 6, 7], dtype=np.int64),
        np.array([5, 0, 6, 0, 7], dtype=np.int32)[::2],
        torch.tensor([5, 6, 7]),
    ],
    ids=["list", "tuple", "numpy-scalars", "int32", "int64", "strided", "torch"],
)
def test_prompt_token_ids_accept_lists_and_integer_arrays(prompt):
    s = make()
    s.add_request("a", prompt, max_tokens=1)
    assert s.schedule().input_ids.tolist() == [5, 6, 7]


def test_stop_token_lists_may_be_none_or_arrays():
    s = make()
    s.add_request("a", [1, 2], max_tokens=4, eos_token_ids=None, stop_token_ids=np.array([9], dtype=np.int64))
    s.schedule()
    [update] = s.update_from_output(np.array([9], dtype=np.int32))
    assert (update.finish_reason, update.stop_token_id) == ("stop", 9)


def test_parallel_sampling_forks_at_the_prompt_and_copies_the_partial_block():
    s = make()
    s.add_request("p", list(range(10, 16)), max_tokens=4, n=3, eos_token_ids=[0])
    out = s.schedule()
    assert out.logits_indices.tolist() == [5, 5, 5]
    assert out.sampled_sample_indices.tolist() == [0, 1, 2]
    assert out.sampled_req_ids == ["p", "p", "p"]
    updates = s.update_from_output(np.array([7, 8, 9], dtype=np.int32))
    assert [(u.sample_index, u.new_token_ids) for u in updates] == [(0, [7]), (1, [8]), (2, [9])]

    out = s.schedule()
    assert out.req_ids == ["p", "p", "p"]
    assert out.sample_indices.tolist() == [0, 1, 2]
    assert out.blocks_to_copy.tolist() == [[2, 3], [2, 4]]
    assert out.block_table.tolist() == [[1, 3], [1, 4], [1, 2]]
    updates = s.update_from_output(np.array([0, 5, 5], dtype=np.int32))
    assert updates[0].finish_reason == "stop" and updates[0].stop_token_id == 0
    assert s.schedule().sample_indices.tolist() == [1, 2]
    s.update_from_output(np.array([5, 5], dtype=np.int32))
    s.abort("p")
    assert not s.has_unfinished_requests()
    assert s.schedule().finished_req_ids == ["p"]
    assert s.stats().num_free_blocks == 15


def test_finish_requests_and_abort_are_reported_at_the_next_step():
    s = make()
    s.add_request("stop-string", [1, 2, 3], max_tokens=8)
    s.add_request("aborted", [1, 2, 3], max_tokens=8)
    s.add_request("running", [4, 5, 6], max_tokens=8)
    assert s.schedule().num_sampled == 3
    s.update_from_output(np.array([9, 9, 9], dtype=np.int32))
    s.finish_requests(["stop-string"], "stop")
    s.abort("aborted")
    out = s.schedule()
    assert out.finished_req_ids == ["stop-string", "aborted"]
    assert out.req_ids == ["running"]
    assert (s.num_running, s.num_waiting) == (1, 0)


def test_prefix_cache_stats_count_tokens():
    s = make()
    s.add_request("first", list(range(9)), max_tokens=1)
    s.schedule()
    s.update_from_output(np.array([1], dtype=np.int32))
    s.add_request("second", list(range(9)), max_tokens=1)
    s.add_request("salted", list(range(9)), max_tokens=1, cache_salt="x")
    s.add_request("skipping", list(range(9)), max_tokens=1, skip_prefix_cache=True)
    out = s.schedule()
    assert out.seq_lens.tolist() == [9, 9, 9]
    assert out.num_tokens == 1 + 9 + 9
    stats = s.stats()
    assert (stats.prefix_cache_queries, stats.prefix_cache_hits) == (27, 8)
    assert 0 < stats.kv_cache_usage <= 1 and stats.num_preemptions == 0 and stats.num_evictions == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(request_id="dup"), r"request_id 'dup' is already in use"),
        (dict(prompt_token_ids=[]), r"prompt_token_ids of request 'x' is empty"),
        (dict(prompt_token_ids=[1] * 64), r"prompt of 64 tokens .* max_model_len = 64"),
        (dict(prompt_token_ids=[1, -2]), r"prompt_token_ids\[1\] = -2: token ids must be >= 0"),
        (dict(prompt_token_ids=[1, 2**40]), r"prompt_token_ids\[1\] = 1099511627776 is out of the int32 range"),
        (dict(prompt_token_ids=[1, 2.0]), r"prompt_token_ids\[1\]: expected an integer token id, got float"),
        (dict(prompt_token_ids=np.ones((2, 2), np.int32)), r"prompt_token_ids: expected 1 dimensions"),
        (dict(prompt_token_ids=np.ones(3, np.float32)), r"expected integer token ids .* got dtype float32"),
        (dict(prompt_token_ids="abc"), r"prompt_token_ids: expected a list of ints or a 1-D integer array, got str"),
        (dict(max_tokens=0), r"max_tokens must be >= 1, got 0"),
        (dict(min_tokens=5, max_tokens=2), r"min_tokens must be in \[0, max_tokens = 2\], got 5"),
        (dict(n=0), r"n must be in \[1, max_num_seqs = 256\], got 0"),
        (dict(eos_token_ids=3), r"eos_token_ids: expected a list of ints"),
        (dict(stop_token_ids=[-1]), r"stop_token_ids\[0\] = -1"),
        (dict(max_tokens=60, n=4), r"needs up to 64 KV-cache blocks .* the cache has 15"),
    ],
)
def test_bad_requests_raise_value_error_naming_the_value(kwargs, message):
    s = make()
    s.add_request("dup", [1], max_tokens=1)
    args = dict(request_id="x", prompt_token_ids=[1, 2], max_tokens=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        s.add_request(args.pop("request_id"), args.pop("prompt_token_ids"), **args)
    assert s.num_waiting == 1


def test_bad_calls_raise_clear_errors():
    with pytest.raises(ValueError, match=r"block_size must be a power of two in \[1, 256\], got 24"):
        _C.SchedulerConfig(num_blocks=8, block_size=24, max_model_len=64)
    with pytest.raises(ValueError, match=r"max_num_batched_tokens = 16 is smaller than max_model_len = 64"):
        _C.SchedulerConfig(num_blocks=8, max_model_len=64, max_num_batched_tokens=16, enable_chunked_prefill=False)
    s = make()
    with pytest.raises(ValueError, match=r"unknown request_id 'ghost'"):
        s.abort("ghost")
    s.add_request("a", [1, 2], max_tokens=4)
    assert "a" in s and "ghost" not in s
    with pytest.raises(ValueError, match=r'finish reason must be "stop", "length" or "abort", got "done"'):
        s.finish_requests(["a"], "done")
    s.schedule()
    ahead = s.schedule()  # one step may be open: "a" decodes the token it samples
    assert ahead.input_ids.tolist() == [-1] and ahead.deferred_input_sources.tolist() == [0]
    with pytest.raises(RuntimeError, match=r"2 steps open: update_from_output\(\) \(or fail_step\(\)\) must close"):
        s.schedule()
    with pytest.raises(RuntimeError, match=r"retract_in_flight\(\) called with 2 steps open"):
        s.retract_in_flight("a", 0)
    with pytest.raises(ValueError, match=r"unknown request_id 'ghost'"):
        s.retract_in_flight("ghost", 0)
    with pytest.raises(ValueError, match=r"sampled_token_ids: expected 1 token ids .* got 2"):
        s.update_from_output(np.array([1, 2], dtype=np.int32))
    with pytest.raises(ValueError, match=r"sampled_token_ids\[0\] = -1"):
        s.update_from_output(np.array([-1], dtype=np.int32))
    assert s.update_from_output(torch.tensor([3]))[0].new_token_ids == [3]


def _check_step(out, config, tokens_of):
    """Invariants of one step; tokens_of(req_id, sample) is the mirror of that sequence."""
    bs = config.block_size
    assert out.num_tokens <= config.max_num_batched_tokens and out.num_reqs <= config.max_num_seqs
    qsl = out.query_start_loc
    assert qsl[0] == 0 and qsl[-1] == out.num_tokens and (np.diff(qsl) > 0).all()
    assert len(set(out.slot_mapping.tolist())) == out.num_tokens, "a slot given twice in one step"
    table = out.block_table
    for row, (req_id, sample) in enumerate(zip(out.req_ids, out.sample_indices.tolist())):
        tokens = tokens_of(req_id, sample)
        positions = out.positions[qsl[row]:qsl[row + 1]]
        assert positions[-1] == out.seq_lens[row] - 1
        assert out.input_ids[qsl[row]:qsl[row + 1]].tolist() == [tokens[p] for p in positions]
        expected_slots = table[row, positions // bs].astype(np.int64) * bs + positions % bs
        assert (out.slot_mapping[qsl[row]:qsl[row + 1]] == expected_slots).all()
    rows = np.searchsorted(qsl, out.logits_indices, side="right") - 1
    assert (out.logits_indices == qsl[rows + 1] - 1).all()


@pytest.mark.parametrize("seed", range(4))
def test_random_workload_respects_budgets_and_frees_everything(seed):
    rng = random.Random(seed)
    config = _C.SchedulerConfig(num_blocks=rng.randint(12, 40), block_size=rng.choice([1, 2, 4, 8]),
                                max_num_seqs=rng.randint(1, 6), max_num_batched_tokens=rng.randint(4, 40),
                                max_model_len=32, enable_prefix_caching=rng.random() < 0.8)
    s = _C.Scheduler(config)
    mirror = {}  # request id -> list of token lists (one per sample)
    n_of = {}
    samples_left = {}  # live request id -> samples not finished yet
    next_id = 0

    def step():
        out = s.schedule()
        _check_step(out, config, lambda rid, i: mirror[rid][i])
        sampled = np.array([rng.randrange(8) for _ in range(out.num_sampled)], dtype=np.int32)
        for update in s.update_from_output(sampled):
            tokens = mirror[update.request_id]
            if len(tokens) < n_of[update.request_id]:
                tokens.extend(list(tokens[0]) for _ in range(n_of[update.request_id] - 1))
            tokens[update.sample_index].extend(update.new_token_ids)
            if update.finish_reason is not None:
                samples_left[update.request_id] -= 1
                if samples_left[update.request_id] == 0:
                    del samples_left[update.request_id]

    for _ in range(300):
        dice = rng.random()
        if dice < 0.3:
            prompt = [rng.randrange(3, 8) for _ in range(rng.randint(1, 20))]
            n = rng.choice([1, 1, 2])
            rid = f"r{next_id}"
            next_id += 1
            try:
                s.add_request(rid, prompt, max_tokens=rng.randint(1, 8), n=min(n, config.max_num_seqs),
                              eos_token_ids=[0], priority=rng.randrange(2))
            except ValueError as error:
                assert "KV-cache blocks" in str(error)
                continue
            mirror[rid] = [prompt]
            n_of[rid] = samples_left[rid] = min(n, config.max_num_seqs)
        elif dice < 0.35 and samples_left:
            rid = rng.choice(sorted(samples_left))
            s.abort(rid)
            del samples_left[rid]
        else:
            step()
    for _ in range(5000):
        if not s.has_unfinished_requests():
            break
        step()
    assert not s.has_unfinished_requests() and not samples_left
    assert s.stats().num_free_blocks == config.num_blocks - 1
