"""One step's rows grouped by adapter, and the deltas they add to the model's linear layers.

The model calls `add` after each linear layer it adapts (an adapter may leave a layer alone). A
step whose tokens all run one adapter adds its delta to every row; otherwise the step's adapters'
deltas are stacked into one (their A one above the other, their B side by side, kept for the next
steps of the same adapters), every row goes through it, and each row keeps the columns of its own
adapter only: two products and a mask for any number of adapters, where gathering each adapter's
rows and adding them back took four operations an adapter. A delta is two products (x @ a^T, then
@ b^T) and an add; on the CPU, up to OPS_MAX_ROWS rows (where the decoder stack and the layers
compute the same bits), by kvserve's few-rows product as the stack computes it (decoder_stack.h), so
that such a step's bits do not depend on which of the two runs it; elsewhere by torch's."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import torch

from kvserve.lora.adapter import LoRAAdapter
from kvserve.models.layers.linear import OPS_MAX_ROWS, Linear, linear


class LoRABatch:
    def __init__(self, adapters: tuple[LoRAAdapter, ...], row_adapter: torch.Tensor | None = None):
        """`adapters`: those the step's rows run; `row_adapter` [T]: each token row's index into
        them (-1: the base model alone); None where one adapter runs every row."""
        self.adapters = adapters
        self.row_adapter = row_adapter
        # A step of several adapters: their stacked deltas by layer, kept for the steps after it.
        self._stacks = _stacks(adapters) if row_adapter is not None else None

    @classmethod
    def of_step(cls, out, requests: Mapping, device: torch.device) -> LoRABatch | None:
        """The step's rows by adapter (RequestState.lora); None where no row runs one."""
        adapters = [requests[request_id].lora for request_id in out.req_ids]
        if all(adapter is None for adapter in adapters):
            return None
        if all(adapter is adapters[0] for adapter in adapters):
            return cls((adapters[0],))
        distinct = tuple({id(adapter): adapter for adapter in adapters if adapter is not None}.values())
        index = {id(adapter): i for i, adapter in enumerate(distinct)}
        per_request = np.array([index[id(adapter)] if adapter is not None else -1 for adapter in adapters])
        rows = np.repeat(per_request, np.diff(out.query_start_loc[:len(adapters) + 1]))
        return cls(distinct, torch.from_numpy(rows).to(device, non_blocking=True))

    @property
    def every_row(self) -> LoRAAdapter | None:
        """The adapter every row of the step runs with, if one does."""
        return self.adapters[0] if self.row_adapter is None else None

    def add(self, layer: Linear, x: torch.Tensor, out: torch.Tensor) -> None:
        """out [T, out] += each row's adapter's delta of `layer` applied to its row of x [T, in]."""
        if self.row_adapter is None:
            delta = self.adapters[0].deltas.get(layer)
            if delta is not None:
                out += _product(_product(x, delta.a), delta.b)
            return
        stacked = _stacked(self._stacks, self.adapters, layer)
        if stacked is not None:
            # Every row through every adapter's A at once, each row keeping its own adapter's columns.
            a, b, column_adapter = stacked
            mine = self.row_adapter[:, None] == column_adapter[None, :]
            out += _product(_product(x, a) * mine, b)


# The stacked deltas of the recent combinations of adapters a step ran, by layer (a combination
# holds its adapters, so that their ids stay theirs while it is kept).
_STACKS: OrderedDict[tuple[int, ...], tuple[tuple[LoRAAdapter, ...], dict]] = OrderedDict()
_MAX_STACKS = 8


def _stacks(adapters: tuple[LoRAAdapter, ...]) -> dict:
    """The stacked deltas, by layer, of this combination of adapters (filled as layers ask)."""
    key = tuple(id(adapter) for adapter in adapters)
    entry = _STACKS.get(key)
    if entry is None:
        entry = _STACKS[key] = (adapters, {})
        if len(_STACKS) > _MAX_STACKS:
            _STACKS.popitem(last=False)
    _STACKS.move_to_end(key)
    return entry[1]


def _stacked(layers: dict, adapters: tuple[LoRAAdapter, ...], layer: Linear) -> tuple | None:
    """The adapters' deltas of `layer` as one (kept in `layers`): their A stacked [sum r, in], their
    B side by side [out, sum r], and each column's adapter index; None where none adapts the layer."""
    if layer not in layers:
        parts = [(i, adapter.deltas[layer]) for i, adapter in enumerate(adapters) if layer in adapter.deltas]
        layers[layer] = None if not parts else (
            torch.cat([delta.a for _, delta in parts]), torch.cat([delta.b for _, delta in parts], dim=1).contiguous(),
            torch.cat([torch.full((delta.a.shape[0],), i, device=delta.a.device) for i, delta in parts]))
    return layers[layer]


def _product(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight^T: kvserve's few-rows product where the decoder stack could take x, else torch's."""
    return linear(x, weight) if x.is_cpu and x.shape[0] <= OPS_MAX_ROWS else x @ weight.T
