"""A linear layer whose output may be several checkpoint projections stacked (fused).

    weight: [sum(output_sizes), input_size]      e.g. qkv_proj = [q_proj; k_proj; v_proj]

One matmul then serves all of them; the parts are views of its output. Parameters are created
uninitialized: the loader (or load_format="dummy") fills them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Linear(nn.Module):
    def __init__(self, input_size: int, output_sizes: int | tuple[int, ...], bias: bool, dtype: torch.dtype):
        super().__init__()
        self.output_sizes = (output_sizes,) if isinstance(output_sizes, int) else tuple(output_sizes)
        total = sum(self.output_sizes)
        self.weight = nn.Parameter(torch.empty(total, input_size, dtype=dtype), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(total, dtype=dtype), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def shard(self, param: torch.Tensor, index: int) -> torch.Tensor:
        """The rows of `param` (weight or bias) that hold stacked projection number `index`."""
        start = sum(self.output_sizes[:index])
        return param[start:start + self.output_sizes[index]]
