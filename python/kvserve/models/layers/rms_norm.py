"""RMSNorm, with the residual add of the next block fused in.

Computed the way the reference checkpoints were trained: normalize in float32, cast back, then scale.
On the CPU, rows of a 2-D input go through one fused kernel (kvserve.ops.rms_norm) instead of the
four framework ops below, which round identically.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kvserve import ops


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, dtype: torch.dtype):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(size, dtype=dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cpu and x.dim() == 2:
            out = torch.empty_like(x)
            ops.rms_norm(out, x, self.weight, self.eps)
            return out
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * normed.to(x.dtype)

    def add_and_norm(self, x: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual) for a block's fresh output x, which is free to reuse;
        the first block passes residual=None."""
        if residual is None:
            return self(x), x
        if x.is_cpu:
            ops.rms_norm(x, x, self.weight, self.eps, residual)  # residual += x; x = norm(residual)
            return x, residual
        x = x.add_(residual)
        return self(x), x
