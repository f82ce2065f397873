"""SiLU-and-mul over a fused [gate; up] projection (one kernel, on the CPU and on CUDA)."""

from __future__ import annotations

import torch

from kvserve import ops


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """[T, 2 * I] holding gate then up -> silu(gate) * up, [T, I]."""
    out = torch.empty(gate_up.shape[0], gate_up.shape[1] // 2, dtype=gate_up.dtype, device=gate_up.device)
    ops.silu_and_mul(out, gate_up)
    return out
