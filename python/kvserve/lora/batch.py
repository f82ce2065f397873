"""One step's rows grouped by adapter, and the deltas they add to the model's linear layers.

The model calls `add` after each linear layer it adapts (an adapter may leave a layer alone). A
step whose tokens all run one adapter adds its delta to every row; otherwise each adapter's rows
are gathered, and their deltas added back at those rows."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from kvserve.lora.adapter import LoRAAdapter
from kvserve.models.layers.linear import Linear


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

    def add(self, layer: Linear, x: torch.Tensor, out: torch.Tensor) -> None:
        """out [T, out] += each adapter's delta of `layer` applied to its rows of x [T, in]."""
        for adapter, rows in self.groups:
            delta = adapter.deltas.get(layer)
            if delta is None:
                continue
            if rows is None:
                out += (x @ delta.a.T) @ delta.b.T
            else:
                out.index_add_(0, rows, (x[rows] @ delta.a.T) @ delta.b.T)
