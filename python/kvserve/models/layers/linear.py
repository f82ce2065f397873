"""A linear layer whose output may be several checkpoint projections stacked (fused).

    weight: [sum(output_sizes), input_size]      e.g. qkv_proj = [q_proj; k_proj; v_proj]

One matmul then serves all of them; the parts are views of its output. Parameters are created
uninitialized: the loader (or load_format="dummy") fills them.

On the CPU, kvserve.ops.linear takes what torch's GEMM does worst (bench/README.md, "Linear"):
every float32 and float16 product (torch's float32 GEMM on this class of CPU runs at about half
the rate of ours, its float16 one far below) and the few-row bfloat16 products of decode, where
oneDNN spends more time packing and dispatching than multiplying. Larger bfloat16 products keep
oneDNN, whose larger register tiles run faster than ours (bench/README.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kvserve import ops

# bfloat16 rows up to which kvserve.ops.linear beats oneDNN on the CPU (bench/README.md, "Linear").
BFLOAT16_OPS_MAX_ROWS = 8


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] @ weight[N, K]^T (+ bias), by the faster path for the dtype and M."""
    if x.is_cpu and x.dim() == 2 and (x.dtype != torch.bfloat16 or x.shape[0] <= BFLOAT16_OPS_MAX_ROWS):
        out = torch.empty(x.shape[0], weight.shape[0], dtype=x.dtype)
        ops.linear(out, x, weight, bias)
        return out
    return F.linear(x, weight, bias)


class Linear(nn.Module):
    def __init__(self, input_size: int, output_sizes: int | tuple[int, ...], bias: bool, dtype: torch.dtype):
        super().__init__()
        self.output_sizes = (output_sizes,) if isinstance(output_sizes, int) else tuple(output_sizes)
        total = sum(self.output_sizes)
        self.weight = nn.Parameter(torch.empty(total, input_size, dtype=dtype), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(total, dtype=dtype), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)

    def shard(self, param: torch.Tensor, index: int) -> torch.Tensor:
        """The rows of `param` (weight or bias) that hold stacked projection number `index`."""
        start = sum(self.output_sizes[:index])
        return param[start:start + self.output_sizes[index]]
