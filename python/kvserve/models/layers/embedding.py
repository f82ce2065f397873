"""Token embedding table; with tied embeddings the same weight is the LM head.

A GGUF file's quantized table may load as its codes (WeightCodes: uint4 or int8 codes with their
groups' scales): a lookup widens the rows it gathers (kvserve.ops.dequantize_weight: each value in
float32, as gguf-py's dequantize gives it, then rounded to the dtype, the bits a widened table
holds), and a tied LM head multiplies by the codes (quantized_linear).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kvserve import ops
from kvserve.models.layers.weight_codes import WeightCodes


class Embedding(WeightCodes, nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, dtype: torch.dtype):
        super().__init__()
        self.vocab_size, self.hidden_size, self.dtype = vocab_size, hidden_size, dtype
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size, dtype=dtype), requires_grad=False)
        self.weight_scale: nn.Parameter | None = None
        self.weight_offset: nn.Parameter | None = None

    def plain_shape(self) -> tuple[int, int]:
        return self.vocab_size, self.hidden_size

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.weight_scale is None:
            return F.embedding(input_ids, self.weight)
        ids = input_ids.reshape(-1)
        rows = torch.empty(ids.numel(), self.hidden_size, dtype=self.dtype, device=self.weight.device)
        offset = None if self.weight_offset is None else self.weight_offset[ids]
        ops.dequantize_weight(rows, self.weight[ids], self.weight_scale[ids], offset)
        return rows.view(*input_ids.shape, self.hidden_size)
