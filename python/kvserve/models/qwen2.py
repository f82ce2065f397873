"""Qwen2: the Llama decoder with a bias on the q, k and v projections (none on o_proj)."""

from __future__ import annotations

from kvserve.model_config import ModelConfig
from kvserve.models.llama import LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    @classmethod
    def attention_options(cls, config: ModelConfig) -> dict:
        return dict(qkv_bias=True, o_bias=False, qk_norm=False)
