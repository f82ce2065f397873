"""Weights held as quantized codes with float32 scales (and offsets): what a Linear's or an Embedding's
weight becomes when a checkpoint's codes load into it as they are (kvserve.quantization's e4m3 codes,
kvserve.uint4's and kvserve.int8's grouped ones)."""

from __future__ import annotations

import torch
from torch import nn

from kvserve import int8, uint4


class WeightCodes:
    """A module (with nn.Module) whose `weight` [rows, columns] may be replaced by codes: weight_scale
    holds their scales, weight_offset a uint4 weight's offsets (both None for a plain weight)."""

    weight: nn.Parameter
    weight_scale: nn.Parameter | None
    weight_offset: nn.Parameter | None

    def plain_shape(self) -> tuple[int, int]:
        """The plain weight's [rows, columns], whatever it holds now."""
        raise NotImplementedError

    def prepare_uint4(self) -> None:
        """Uninitialized uint4 codes with their groups' scales and offsets (kvserve.uint4) in place of
        the weight, for a checkpoint's 4-bit blocks to load into."""
        rows, columns = self.plain_shape()
        groups = columns // uint4.GROUP_SIZE
        self.prepare_codes(torch.empty(rows, columns // 2, dtype=torch.uint8), torch.empty(rows, groups),
                           torch.empty(rows, groups))

    def prepare_int8(self) -> None:
        """Uninitialized int8 codes with their groups' scales (kvserve.int8) in place of the weight, for a
        checkpoint's symmetric 8- to 3-bit blocks to load into."""
        rows, columns = self.plain_shape()
        self.prepare_codes(torch.empty(rows, columns, dtype=torch.int8), torch.empty(rows, columns // int8.GROUP_SIZE),
                           None)

    def prepare_codes(self, codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None) -> None:
        """These codes, scales and offsets in place of the weight, on its device."""
        device = self.weight.device
        self.weight = nn.Parameter(codes.to(device), requires_grad=False)
        self.weight_scale = nn.Parameter(scale.to(device), requires_grad=False)
        if offset is not None:
            self.weight_offset = nn.Parameter(offset.to(device), requires_grad=False)
