"""RMSNorm, with the residual add of the next block fused in.

Computed the way the reference checkpoints were trained: normalize in float32, cast back, then scale
(kvserve.ops.rms_norm rounds at those points), one kernel per call on the CPU and on CUDA.
"""

from __future__ import annotations

import torch
from torch import nn

from kvserve import ops


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, dtype: torch.dtype):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(size, dtype=dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [num_tokens, hidden], or [num_tokens, heads, hidden] (per-head norms: Qwen3's q/k)."""
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        ops.rms_norm(out, x, self.weight, self.eps)
        return out

    def add_and_norm(self, x: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual); the first block passes residual=None. Both inputs are
        overwritten with the results (x is a block's fresh output, residual the running sum)."""
        if residual is None:
            return self(x), x
        ops.fused_add_rms_norm(x, residual, self.weight, self.eps)
        return x, residual
