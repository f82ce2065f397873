"""Rotary position embedding (the "neox" half-split layout of Hugging Face Llama) and its scalings.

Each pair (x[i], x[i + D/2]) of a head is rotated by angle position * inv_freq[i]. cos/sin of every
position the model allows are computed once per device and dtype (as vLLM's cos_sin_cache); a step
looks up its positions' rows, which every layer shares, and one kernel (kvserve.ops.rotary_and_cache,
in the attention layer) turns a layer's query and key heads in place as it writes the KV cache.
"""

from __future__ import annotations

import math

import torch

from kvserve.model_config import RopeConfig


def inverse_frequencies(rope: RopeConfig, head_dim: int) -> tuple[torch.Tensor, float]:
    """float32 [head_dim // 2] inverse frequencies, and the factor that scales cos and sin."""
    inv_freq = 1.0 / (rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    s = rope.scaling
    if rope.rope_type == "default":
        return inv_freq, 1.0
    if rope.rope_type == "linear":
        return inv_freq / s["factor"], 1.0
    if rope.rope_type == "llama3":
        return _llama3(inv_freq, s), 1.0
    return _yarn(rope, head_dim, s)


def _llama3(inv_freq: torch.Tensor, s: dict) -> torch.Tensor:
    if "frequency_factors" in s:  # the same scaling, precomputed per frequency (GGUF files)
        return inv_freq / torch.tensor(s["frequency_factors"], dtype=torch.float32)
    # Long wavelengths (beyond low_freq_wavelen) are slowed by `factor`, short ones (below
    # high_freq_wavelen) kept, and the band between blends the two linearly in context/wavelength.
    context = s["original_max_position_embeddings"]
    low_freq_wavelen = context / s["low_freq_factor"]
    high_freq_wavelen = context / s["high_freq_factor"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / s["factor"], inv_freq)
    smooth = (context / wavelen - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])
    blended = (1 - smooth) * scaled / s["factor"] + smooth * scaled
    in_band = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(in_band, blended, scaled)


def _yarn(rope: RopeConfig, head_dim: int, s: dict) -> tuple[torch.Tensor, float]:
    # YaRN: dimensions that rotate many times over the original context keep their frequency
    # (extrapolate), slow ones are divided by `factor` (interpolate), with a linear ramp between.
    factor = s["factor"]
    context = s["original_max_position_embeddings"]
    attention_factor = s.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = s.get("mscale"), s.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = _yarn_mscale(factor)

    def dim_of(rotations: float) -> float:
        return head_dim * math.log(context / (rotations * 2 * math.pi)) / (2 * math.log(rope.theta))

    low, high = dim_of(s.get("beta_fast") or 32), dim_of(s.get("beta_slow") or 1)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolated = 1.0 / (rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    return extrapolated / factor * ramp + extrapolated * (1 - ramp), float(attention_factor)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


class RotaryEmbedding:
    def __init__(self, rope: RopeConfig, head_dim: int, max_positions: int):
        self.inv_freq, self.attention_factor = inverse_frequencies(rope, head_dim)
        self.max_positions = max_positions
        # (device, dtype) -> (cos, sin) [max_positions, head_dim // 2]: two row lookups a step instead
        # of the half-dozen elementwise ops that compute them (the same ops, so the same values).
        self._tables: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def compute_cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin: [T, head_dim // 2] in `dtype`, computed as Hugging Face computes them."""
        angles = positions.float().unsqueeze(1) * self.inv_freq.to(positions.device).unsqueeze(0)
        cos = (angles.cos() * self.attention_factor).to(dtype)
        sin = (angles.sin() * self.attention_factor).to(dtype)
        return cos, sin

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin: [T, head_dim // 2] in `dtype` for positions in [0, max_positions)."""
        key = (positions.device, dtype)
        tables = self._tables.get(key)
        if tables is None:
            all_positions = torch.arange(self.max_positions, device=positions.device)
            tables = self._tables[key] = self.compute_cos_sin(all_positions, dtype)
        cos, sin = tables
        return cos.index_select(0, positions), sin.index_select(0, positions)
