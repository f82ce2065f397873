"""The decode graphs' persistent inputs, on the CPU: the batch-size ladder, the padding of a step into
a larger graph batch, every row padded before a capture, and that a padded step computes exactly
what the step itself computes (the padding rows write no K/V and read only valid blocks)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kvserve import Engine, SamplingParams
from kvserve.gpu.decode_inputs import DecodeInputs
from kvserve.gpu.graphs import graph_batch_sizes


def test_batch_size_ladder():
    assert graph_batch_sizes(1) == [1]
    assert graph_batch_sizes(8) == [1, 2, 4, 8]
    assert graph_batch_sizes(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert graph_batch_sizes(100) == [1, 2, 4, 8, 16, 32, 64, 100]
    with pytest.raises(ValueError, match="max_batch: expected >= 1, got 0"):
        graph_batch_sizes(0)


def decode_step(num_reqs, width, seed=0):
    rng = np.random.default_rng(seed)
    return SimpleNamespace(
        num_reqs=num_reqs,
        input_ids=rng.integers(0, 1000, num_reqs).astype(np.int32),
        positions=rng.integers(0, 60, num_reqs).astype(np.int64),
        slot_mapping=rng.integers(0, 200, num_reqs).astype(np.int64),
        seq_lens=rng.integers(1, 60, num_reqs).astype(np.int32),
        block_table=rng.integers(1, 50, (num_reqs, width)).astype(np.int32))


def test_a_step_is_padded_to_its_graph_batch():
    inputs = DecodeInputs(max_batch=8, max_blocks=6, device=torch.device("cpu"))
    wide = decode_step(7, 6, seed=1)
    wide.input_ids[:] = -1  # scheduled ahead: every input deferred, filled on the device
    inputs.stage(wide, 8)
    step = decode_step(3, 4, seed=2)
    inputs.stage(step, 4)
    assert inputs.view("input_ids", 4).tolist() == step.input_ids.tolist() + [0]  # never an id out of range
    assert inputs.view("positions", 4)[:3].tolist() == step.positions.tolist()
    assert inputs.view("slot_mapping", 4).tolist() == step.slot_mapping.tolist() + [-1]
    assert inputs.view("seq_lens", 4).tolist() == step.seq_lens.tolist() + [1]
    assert inputs.view("query_start_loc", 4).tolist() == [0, 1, 2, 3, 4]
    table = inputs.view("block_table", 4)
    assert table.shape == (4, 6) and table[:3, :4].tolist() == step.block_table.tolist()
    assert table[3].tolist() == wide.block_table[3].tolist()  # a padding row keeps earlier, valid ids
    with pytest.raises(ValueError, match=r"block_table: 7 blocks per request, more than the graphs' 6"):
        inputs.stage(decode_step(2, 7), 2)


def test_padding_every_row_leaves_no_step_behind():
    """What the graphs' capture runs on: no deferred -1 token, no live request's slot, whatever the
    last step staged; the block table keeps its (valid) ids."""
    inputs = DecodeInputs(max_batch=8, max_blocks=6, device=torch.device("cpu"))
    step = decode_step(7, 6, seed=3)
    step.input_ids[:] = -1
    inputs.stage(step, 8)
    inputs.pad()
    assert inputs.view("input_ids", 8).tolist() == [0] * 8
    assert inputs.view("positions", 8).tolist() == [0] * 8
    assert inputs.view("slot_mapping", 8).tolist() == [-1] * 8
    assert inputs.view("seq_lens", 8).tolist() == [1] * 8
    assert inputs.view("query_start_loc", 8).tolist() == list(range(9))
    assert inputs.view("block_table", 8)[:7].tolist() == step.block_table.tolist()


def first_decode_step(tiny_model_dir, **overrides):
    """An engine on the CPU with three requests past their prompts, and their first decode step
    scheduled."""
    engine = Engine(str(tiny_model_dir("LlamaForCausalLM", **overrides)), dtype="float32", device="cpu",
                    block_size=4, kv_cache_memory_gb=0.01)
    for i, prompt in enumerate(["The capital of France is", "Hi", "ka lo mi ne ru sa ti"]):
        engine.add_request(str(i), prompt, SamplingParams(temperature=0, max_tokens=5))
    engine.step()
    out = engine.scheduler.schedule()
    assert out.num_reqs == out.num_tokens == 3
    return engine, out


def from_the_same_cache(kv_caches, first, second):
    """first() and then second(), each from the caches as they are now: (first's output, the caches
    first() left, second's output); the caches stay as second() left them."""
    before = [(k.clone(), v.clone()) for k, v in kv_caches]
    with torch.inference_mode():
        expected = first().clone()
        expected_caches = [(k.clone(), v.clone()) for k, v in kv_caches]
        for (k, v), (k0, v0) in zip(kv_caches, before):
            k.copy_(k0)
            v.copy_(v0)
        return expected, expected_caches, second()


def test_a_padded_step_computes_what_the_step_computes(tiny_model_dir):
    engine, out = first_decode_step(tiny_model_dir)
    runner = engine.runner
    inputs = DecodeInputs(8, math.ceil(engine.max_model_len / 4), torch.device("cpu"))

    def padded():
        inputs.stage(out, 4)
        return runner.model(inputs.view("input_ids", 4), inputs.view("positions", 4), runner.kv_caches,
                            inputs.metadata(4))

    expected, expected_caches, got = from_the_same_cache(runner.kv_caches, lambda: runner.forward(out, None, None), padded)
    torch.testing.assert_close(got[:3], expected, rtol=1e-5, atol=1e-5)  # a 4-row matmul may block its sums differently
    for cache, expected_cache in zip(runner.kv_caches, expected_caches):
        torch.testing.assert_close(cache, expected_cache, rtol=1e-5, atol=1e-5, equal_nan=True)
