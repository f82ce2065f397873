"""One step's rows grouped by adapter, and the deltas they add to the model's linear layers.

The model calls `add` after each linear layer it adapts (an adapter may leave a layer alone). A
step whose tokens all run one adapter adds its delta to every row; otherwise each adapter's rows
are gathered, and their deltas added back at those rows. A delta is two products (x @ a^T, then
@ b^T) and an add; on the CPU, up to OPS_MAX_ROWS rows (where the decoder stack and the layers
compute the same bits), by kvserve's few-rows product as the stack computes it (decoder_stack.h), so
that such a step's bits do not depend on which of the two runs it; elsewhere by torch's."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from kvserve.lora.adapter import LoRAAdapter
from kvserve.models.layers.linear import OPS_MAX_ROWS, Linear, linear


class LoRABatch:
    def __init__(self, groups: list[tuple[LoRAAdapter, torch.Tensor | None]]):
        self.groups = groups  # (adapter, its token rows; None: every row)

    @classmethod
    def of_step(cls, out, requests: Mapping, device: torch.device) -> LoRABatch | None:
        """The step's rows by adapter (RequestState.lora); None where no row runs one."""
        adapters = [requests[request_id].lora for request_id in out.req_ids]
        if all(adapter is None for adapter in adapters):
            return None
        if all(adapter is adapters[0] for adapter in adapters):
            return cls([(adapters[0], None)])
        starts = out.query_start_loc
        rows: dict[int, tuple[LoRAAdapter, list[np.ndarray]]] = {}
        for row, adapter in enumerate(adapters):
            if adapter is not None:
                rows.setdefault(id(adapter), (adapter, []))[1].append(np.arange(starts[row], starts[row + 1]))
        return cls([(adapter, torch.from_numpy(np.concatenate(ranges).astype(np.int64)).to(device, non_blocking=True))
                    for adapter, ranges in rows.values()])

    @property
    def every_row(self) -> LoRAAdapter | None:
        """The adapter every row of the step runs with, if one does."""
        if len(self.groups) == 1 and self.groups[0][1] is None:
            return self.groups[0][0]
        return None

    def add(self, layer: Linear, x: torch.Tensor, out: torch.Tensor) -> None:
        """out [T, out] += each adapter's delta of `layer` applied to its rows of x [T, in]."""
        for adapter, rows in self.groups:
            delta = adapter.deltas.get(layer)
            if delta is None:
                continue
            if rows is None:
                out += _product(_product(x, delta.a), delta.b)
            else:
                out.index_add_(0, rows, _product(_product(x[rows], delta.a), delta.b))


def _product(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight^T: kvserve's few-rows product where the decoder stack could take x, else torch's."""
    return linear(x, weight) if x.is_cpu and x.shape[0] <= OPS_MAX_ROWS else x @ weight.T
