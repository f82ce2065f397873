"""RMSNorm, with the residual add of the next block fused in.

Computed the way the reference checkpoints were trained: normalize in float32, cast back, then scale.
On CUDA one kernel does it (kvserve.ops.rms_norm / fused_add_rms_norm), in place where it can.
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
        if x.is_cuda:
            out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
            ops.rms_norm(out, x, self.weight, self.eps)
            return out
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * normed.to(x.dtype)

    def add_and_norm(self, x: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual); the first block passes residual=None. Both inputs may
        be overwritten with the results (x is a block's fresh output, residual the running sum)."""
        if residual is None:
            return self(x), x
        if x.is_cuda:
            ops.fused_add_rms_norm(x, residual, self.weight, self.eps)
            return x, residual
        x = x.add_(residual)
        return self(x), x
