"""The model FLOPs that compute efficiencies divide by: projections and lm_head against torch's own
FLOP counter on transformers' model, attention against a count by hand."""

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from kvserve.bench.flops import request_flops, workload_flops
from kvserve.model_config import ModelConfig

pytest.importorskip("transformers")
from tiny_models import tiny_hf_model  # noqa: E402


@pytest.fixture(scope="module")
def hf_model():
    return tiny_hf_model("LlamaForCausalLM")  # hidden 64, 4 heads of 16, 2 kv heads, 2 layers, vocab 1000


def config_of(model) -> ModelConfig:
    return ModelConfig.from_hf_dicts(model.config.to_dict())


def attention_by_hand(config: ModelConfig, keys_per_layer: int) -> int:
    # QKᵀ and PV: 2 FLOPs per multiply-add, each over num_heads · head_dim per key.
    return 2 * 2 * config.num_attention_heads * config.head_dim * keys_per_layer * config.num_hidden_layers


def test_projections_and_lm_head_match_torch_flop_counter(hf_model):
    config = config_of(hf_model)
    tokens = 8
    with FlopCounterMode(display=False) as counter:
        hf_model(torch.randint(10, 1000, (1, tokens)), logits_to_keep=1)
    counted = counter.get_flop_counts()["Global"]
    assert set(counted) == {torch.ops.aten.mm}  # its attention (SDPA) is not counted: checked below
    causal_keys = tokens * (tokens + 1) // 2
    assert request_flops(config, tokens, 1) - attention_by_hand(config, causal_keys) == counted[torch.ops.aten.mm]


def test_a_request_counts_every_token_but_the_last_and_samples_each_output(hf_model):
    config = config_of(hf_model)
    # 5 prompt + 4 output tokens: 8 go through the layers (the last output is never fed back).
    projections = 2 * (64 * (64 + 32 + 32) + 64 * 64 + 3 * 64 * 96) * 2 * 8
    lm_head = 2 * 64 * 1000 * 4
    assert request_flops(config, 5, 4) == projections + attention_by_hand(config, 8 * 9 // 2) + lm_head == 1513472
    assert workload_flops(config, [(5, 4), (5, 4), (2, 7)]) == 2 * 1513472 + request_flops(config, 2, 7)


def test_a_sliding_window_caps_the_keys_each_token_sees(hf_model):
    config = config_of(hf_model)
    windowed = dataclasses.replace(config, sliding_windows=(3, None))
    # 8 tokens: layer 0 sees 1, 2, 3, 3, 3, 3, 3, 3 keys; layer 1 sees 1 .. 8.
    saved = attention_by_hand(config, 36 - 21) // config.num_hidden_layers
    assert request_flops(config, 5, 4) - request_flops(windowed, 5, 4) == saved


def test_rejects_empty_requests(hf_model):
    with pytest.raises(ValueError, match="output_len=0"):
        request_flops(config_of(hf_model), 5, 0)
