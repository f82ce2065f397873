"""WORKLOAD.md as data: the model presets and the named benchmark cases.

A case is named as in WORKLOAD.md: `offline-N-IN-OUT` (N requests of IN prompt tokens, exactly OUT
output tokens, all submitted at once) or `serve-N-IN-OUT@RATE` (the same requests sent to an
OpenAI-compatible server at RATE requests/s, `inf` for all at once).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelPreset:
    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int = 32000
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


MODEL_PRESETS = {
    p.name: p
    for p in (
        ModelPreset("tiny", 256, 688, 4, 4, 2),
        ModelPreset("small", 512, 1408, 8, 8, 4),
        ModelPreset("0.5b", 896, 4864, 24, 14, 2),
        ModelPreset("1b", 2048, 8192, 16, 32, 8),
        ModelPreset("8b", 4096, 14336, 32, 32, 8, vocab_size=128256, max_position_embeddings=8192,
                    rope_theta=500000.0),
    )
}


def model_preset(name: str) -> ModelPreset:
    if name not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {name!r}: expected one of {', '.join(MODEL_PRESETS)}")
    return MODEL_PRESETS[name]


@dataclass(frozen=True)
class Case:
    kind: str  # "offline" or "serve"
    num_prompts: int
    input_len: int
    output_len: int
    request_rate: float = float("inf")  # serve only

    @property
    def name(self) -> str:
        base = f"{self.kind}-{self.num_prompts}-{self.input_len}-{self.output_len}"
        if self.kind == "offline":
            return base
        rate = "inf" if self.request_rate == float("inf") else f"{self.request_rate:g}"
        return f"{base}@{rate}"


_CASE_RE = re.compile(r"(offline|serve)-(\d+)-(\d+)-(\d+)(?:@(inf|\d+(?:\.\d+)?))?")


def parse_case(name: str) -> Case:
    match = _CASE_RE.fullmatch(name)
    if match is None or (match[1] == "offline") != (match[5] is None):
        raise ValueError(f"bad case {name!r}: expected offline-N-IN-OUT or serve-N-IN-OUT@RATE (RATE: inf or req/s)")
    kind, n, input_len, output_len, rate = match.groups()
    if min(int(n), int(input_len), int(output_len)) < 1 or rate in ("0", "0.0"):
        raise ValueError(f"bad case {name!r}: N, IN, OUT and RATE must be positive")
    return Case(kind, int(n), int(input_len), int(output_len), float(rate) if rate else float("inf"))


# WORKLOAD.md's standard cases: (case, model preset).
CPU_CASES = (
    ("offline-256-64-64", "tiny"),
    ("offline-64-128-128", "small"),
    ("offline-64-128-128", "0.5b"),
    ("serve-64-128-128@inf", "small"),
    ("serve-64-128-128@4", "small"),
)
GPU_CASES = (("offline-1000-512-128", "8b"),)
