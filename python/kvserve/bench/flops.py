"""The model FLOPs of a workload: what any engine must compute to serve it, counted one way for
every engine so that compute efficiencies (FLOPs ÷ wall time ÷ GEMM rate) line up.

A request of P prompt tokens and O output tokens puts T = P + O - 1 tokens through the layers (the
last output token is sampled, never fed back) and samples O rows:

    projections   2 · (q, k, v, o, gate, up, down weights of every layer) · T
    attention     2 · 2 · num_heads · head_dim · (keys each token sees), per layer   (QKᵀ and PV)
    lm_head       2 · hidden · vocab · O

Norms, rotary embeddings, activations and sampling are elementwise and left out, as in MFU. The
count is the workload's: prefix-cache hits and recomputation after a preemption do not change it.
"""

from __future__ import annotations

from collections.abc import Iterable

from kvserve.model_config import ModelConfig


def projection_weights_per_layer(config: ModelConfig) -> int:
    q = config.num_attention_heads * config.head_dim
    kv = config.num_key_value_heads * config.head_dim
    attention = config.hidden_size * (q + 2 * kv) + q * config.hidden_size
    mlp = 3 * config.hidden_size * config.intermediate_size
    return attention + mlp


def _keys_seen(num_tokens: int, window: int | None) -> int:
    """Σ over positions p < num_tokens of the keys position p attends to: p + 1, or at most window."""
    if window is None or num_tokens <= window:
        return num_tokens * (num_tokens + 1) // 2
    return window * (window + 1) // 2 + (num_tokens - window) * window


def request_flops(config: ModelConfig, prompt_len: int, output_len: int) -> int:
    if prompt_len < 1 or output_len < 1:
        raise ValueError(f"prompt_len={prompt_len}, output_len={output_len}: expected both >= 1")
    num_tokens = prompt_len + output_len - 1
    projections = 2 * projection_weights_per_layer(config) * config.num_hidden_layers * num_tokens
    per_key = 4 * config.num_attention_heads * config.head_dim
    attention = sum(per_key * _keys_seen(num_tokens, window) for window in config.sliding_windows)
    lm_head = 2 * config.hidden_size * config.vocab_size * output_len
    return projections + attention + lm_head


def workload_flops(config: ModelConfig, lengths: Iterable[tuple[int, int]]) -> int:
    """FLOPs of every (prompt_len, output_len) request."""
    return sum(request_flops(config, p, o) for p, o in lengths)
