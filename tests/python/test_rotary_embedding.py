"""Rotary inverse frequencies for each scaling type against transformers' own, and the in-place
rotation against the rotate-half formula."""

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from kvserve import ops
from kvserve.model_config import ModelConfig
from kvserve.models.layers.rotary_embedding import RotaryEmbedding, inverse_frequencies

SCALINGS = [
    None,
    {"rope_type": "linear", "factor": 3.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 8192},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096, "beta_fast": 16,
     "beta_slow": 2, "mscale": 0.8, "mscale_all_dim": 0.5, "truncate": False},
    {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 4096, "attention_factor": 1.3},
]


@pytest.mark.parametrize("scaling", SCALINGS, ids=lambda s: "default" if s is None else s["rope_type"])
def test_inverse_frequencies_match_transformers(scaling):
    hf = dict(architectures=["LlamaForCausalLM"], vocab_size=64, hidden_size=512, intermediate_size=64,
              num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=16384, rope_theta=500000.0,
              rope_scaling=scaling)
    rope = ModelConfig.from_hf_dicts(hf).rope
    hf_config = LlamaConfig(**{k: v for k, v in hf.items() if k != "architectures"})
    hf_inv_freq, hf_factor = ROPE_INIT_FUNCTIONS[rope.rope_type](hf_config, "cpu") \
        if rope.rope_type != "default" else (None, 1.0)
    inv_freq, factor = inverse_frequencies(rope, 128)
    if hf_inv_freq is not None:
        torch.testing.assert_close(inv_freq, hf_inv_freq.float(), rtol=1e-6, atol=0)
    assert factor == pytest.approx(hf_factor)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_rotation_in_place_on_strided_views(dtype):
    """q and k as views of one fused qkv row, rotated as Hugging Face's formula rounds in `dtype`."""
    torch.manual_seed(0)
    rope = ModelConfig.from_hf_dicts(dict(architectures=["LlamaForCausalLM"], vocab_size=8, hidden_size=64,
                                          intermediate_size=8, num_hidden_layers=1, num_attention_heads=4,
                                          max_position_embeddings=64)).rope
    fused = torch.randn(5, (4 + 2 + 2) * 16).to(dtype)
    q = fused[:, :64].view(5, 4, 16)  # row stride 128, like q and k inside a fused qkv
    k = fused[:, 64:96].view(5, 2, 16)
    fused_before = fused.clone()
    positions = torch.tensor([0, 3, 7, 8, 31])
    cos, sin = RotaryEmbedding(rope, 16, 64).cos_sin(positions, dtype)
    ops.rotary_embedding(q, k, cos, sin)
    full_cos, full_sin = torch.cat([cos, cos], -1).unsqueeze(1), torch.cat([sin, sin], -1).unsqueeze(1)
    for ours, before in ((q, fused_before[:, :64].view(5, 4, 16)), (k, fused_before[:, 64:96].view(5, 2, 16))):
        rotate_half = torch.cat([-before[..., 8:], before[..., :8]], -1)
        expected = before * full_cos + rotate_half * full_sin
        if dtype == torch.float32:
            torch.testing.assert_close(ours, expected)
        else:
            assert torch.equal(ours, expected)
    assert torch.equal(fused[:, 96:], fused_before[:, 96:])  # v, beside the views, is untouched


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_cos_sin_table_rows_equal_the_formula(dtype):
    """A step's cos/sin are rows of the per-device table, bit for bit what the formula gives for the
    step's positions alone, whatever their number and order."""
    rope = ModelConfig.from_hf_dicts(dict(architectures=["LlamaForCausalLM"], vocab_size=8, hidden_size=512,
                                          intermediate_size=8, num_hidden_layers=1, num_attention_heads=4,
                                          max_position_embeddings=40000, rope_theta=500000.0)).rope
    rotary = RotaryEmbedding(rope, 128, 40000)
    generator = torch.Generator().manual_seed(0)
    for count in (1, 3, 17, 1000):
        positions = torch.randint(0, 40000, (count,), generator=generator, dtype=torch.int32)
        positions[0] = 39999
        for got, expected in zip(rotary.cos_sin(positions, dtype), rotary.compute_cos_sin(positions, dtype)):
            assert torch.equal(got, expected)
