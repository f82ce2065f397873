"""The persistent inputs of the captured decode graphs, and the host staging they are filled from.

A graph replays the kernels it captured with the same pointers, so every decode step writes its
batch into the same device buffer: one int32 tensor, viewed as

    input_ids [B] | positions [B] | slot_mapping [B] | seq_lens [B] | query_start_loc [B + 1] | block_table [B, W]

with B the largest graph batch and W = ceil(max_model_len / block_size). A step of n requests run
by the graph of batch b >= n fills rows [0, n) and pads rows [n, b): token 0 (an earlier step may
have left the -1 of a deferred input there), slot -1 (no K/V written), context 1 (one key read from
column 0 of the row's block table, which always holds a valid block id: zeros at first, then ids of
earlier steps). query_start_loc is 0, 1, ..., B for every decode step and
never changes. The block table's columns past a row's blocks keep stale ids the kernels never read.

Each step copies one pinned host range to the device: everything up to the end of the block
table's first b rows. The host range is rewritten only after the last step's copy is done.
"""

from __future__ import annotations

import numpy as np
import torch

from kvserve.models import AttentionMetadata


class DecodeInputs:
    def __init__(self, max_batch: int, max_blocks: int, device: torch.device):
        self.max_batch, self.max_blocks = max_batch, max_blocks
        vectors = 4 * max_batch
        total = vectors + max_batch + 1 + max_batch * max_blocks
        host = torch.zeros(total, dtype=torch.int32, pin_memory=device.type == "cuda")
        self._host, self._host_np = host, host.numpy()
        self.buffer = torch.zeros(total, dtype=torch.int32, device=device)
        self._copied = torch.cuda.Event() if device.type == "cuda" else None
        self._vectors = vectors
        self._views = {}
        for name, side in (("host", self._host_np), ("device", self.buffer)):
            self._views[name] = {
                "input_ids": side[0:max_batch],
                "positions": side[max_batch:2 * max_batch],
                "slot_mapping": side[2 * max_batch:3 * max_batch],
                "seq_lens": side[3 * max_batch:vectors],
                "query_start_loc": side[vectors:vectors + max_batch + 1],
                "block_table": side[vectors + max_batch + 1:].reshape(max_batch, max_blocks),
            }
        self._views["host"]["query_start_loc"][:] = np.arange(max_batch + 1, dtype=np.int32)
        self.buffer[vectors:].copy_(host[vectors:])
        self.pad()

    def view(self, name: str, batch: int) -> torch.Tensor:
        """The device buffer's `name` for a graph of `batch` rows."""
        tensor = self._views["device"][name]
        return tensor[:batch + 1] if name == "query_start_loc" else tensor[:batch]

    def metadata(self, batch: int) -> AttentionMetadata:
        return AttentionMetadata(slot_mapping=self.view("slot_mapping", batch),
                                 block_table=self.view("block_table", batch),
                                 seq_lens=self.view("seq_lens", batch),
                                 query_start_loc=self.view("query_start_loc", batch))

    def pad(self) -> None:
        """Every row padding: token 0 at position 0, no slot, context 1 (the block table keeps its ids,
        each a valid block); on the device once the copy enqueued on the current stream is done."""
        if self._copied is not None:
            self._copied.synchronize()
        host = self._views["host"]
        host["input_ids"][:] = 0
        host["positions"][:] = 0
        host["slot_mapping"][:] = -1
        host["seq_lens"][:] = 1
        self.buffer[:self._vectors].copy_(self._host[:self._vectors], non_blocking=True)
        if self._copied is not None:
            self._copied.record()

    def stage(self, out, batch: int) -> None:
        """Write decode step `out` (num_reqs <= batch, one token each) into the device buffer, padded
        to `batch` rows; enqueued on the current stream."""
        n = out.num_reqs
        if self._copied is not None:
            self._copied.synchronize()
        host = self._views["host"]
        host["input_ids"][:n] = out.input_ids
        host["input_ids"][n:batch] = 0
        host["positions"][:n] = out.positions
        host["slot_mapping"][:n] = out.slot_mapping
        host["slot_mapping"][n:batch] = -1
        host["seq_lens"][:n] = out.seq_lens
        host["seq_lens"][n:batch] = 1
        width = out.block_table.shape[1]
        if width > self.max_blocks:
            raise ValueError(f"block_table: {width} blocks per request, more than the graphs' {self.max_blocks}")
        host["block_table"][:n, :width] = out.block_table
        end = self._vectors + self.max_batch + 1 + batch * self.max_blocks
        self.buffer[:end].copy_(self._host[:end], non_blocking=True)
        if self._copied is not None:
            self._copied.record()
