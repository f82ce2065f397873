"""Qwen3: the Llama decoder with an RMSNorm over each query and key head before the rotation."""

from __future__ import annotations

from kvserve.model_config import ModelConfig
from kvserve.models.llama import LlamaForCausalLM


class Qwen3ForCausalLM(LlamaForCausalLM):
    @classmethod
    def attention_options(cls, config: ModelConfig) -> dict:
        return dict(qkv_bias=config.attention_bias, o_bias=config.attention_bias, qk_norm=True)
