"""The KV-cache profiling step builds a batch the kernels accept: run on the CPU, whose kernels check
every metadata value, for the shapes of batch the scheduler's limits allow."""

from __future__ import annotations

import pytest
import torch

from kvserve.gpu.memory import profile_step, scratch_caches
from kvserve.loader import load_model


@pytest.mark.parametrize("max_num_batched_tokens,max_num_seqs,max_model_len",
                         [(64, 4, 256), (300, 256, 100), (37, 2, 16), (5, 8, 256)])
def test_the_largest_step_runs(tiny_model_dir, max_num_batched_tokens, max_num_seqs, max_model_len):
    loaded = load_model(tiny_model_dir("Qwen2ForCausalLM"), dtype="float32")
    scratch = scratch_caches(loaded.model_config, torch.float32, torch.device("cpu"), 16, max_model_len)
    before = [(k.clone(), v.clone()) for k, v in scratch]
    profile_step(loaded.model, scratch, loaded.model_config.vocab_size, block_size=16,
                 max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs,
                 max_model_len=max_model_len)
    for (k, v), (k0, v0) in zip(scratch, before):
        assert torch.equal(k, k0) and torch.equal(v, v0)  # nothing written
