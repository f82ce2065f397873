"""CUDA graphs for decode steps (every request one new token): one graph per batch size of a
ladder, 1, 2, 4, 8, ... up to the largest batch, captured once; a step of n requests replays the
smallest graph of at least n rows, its inputs padded (decode_inputs.py).

A decode step of a large model is hundreds of short kernels; replaying them as one graph removes the
launch overhead that would otherwise leave the GPU idle between them. Graphs capture the model's
forward pass only: the logits and the sampler run after it, on the rows that are real.

(A step was two graphs for a while, the first two layers then the rest, so that the GPU would start
before the host had launched the whole step. With steps scheduled ahead the GPU no longer waits for
that launch: one graph and two took the same time at batch 1, 8 and 64 on an H200, bench/README.md.)
"""

from __future__ import annotations

import bisect
import logging
import time

import torch
from torch import nn

from kvserve.gpu.decode_inputs import DecodeInputs
from kvserve.model_runner import LaunchedStep, fill_deferred_inputs

logger = logging.getLogger("kvserve")


def graph_batch_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, ... below max_batch, then max_batch itself."""
    if max_batch < 1:
        raise ValueError(f"max_batch: expected >= 1, got {max_batch}")
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return sizes + [max_batch]


class DecodeGraphs:
    def __init__(self, model: nn.Module, kv_caches: list[tuple[torch.Tensor, torch.Tensor]], max_batch: int,
                 max_blocks: int, device: torch.device):
        self.model, self.kv_caches = model, kv_caches
        self.sizes = graph_batch_sizes(max_batch)
        self.max_batch = max_batch
        self.inputs = DecodeInputs(max_batch, max_blocks, device)
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}  # batch -> (graph, its output)

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every batch size, the largest first so that the smaller ones reuse its memory."""
        start, pool = time.perf_counter(), None
        # The passes below run on the buffer's inputs: padding rows, not what the last step left
        # there (a deferred -1 token, the slots of live requests' K/V).
        self.inputs.pad()
        for batch in reversed(self.sizes):
            args = (self.inputs.view("input_ids", batch), self.inputs.view("positions", batch), self.kv_caches,
                    self.inputs.metadata(batch))
            # Outside the capture first: lazy allocations (cuBLAS workspaces, the split workspace of
            # attention and of the tiled products over codes) must not happen inside it.
            self.model(*args)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                hidden = self.model(*args)
            pool = graph.pool()
            self._graphs[batch] = (graph, hidden)
        torch.cuda.synchronize()
        logger.info("captured CUDA graphs for decode batches %s in %.1f s", self.sizes, time.perf_counter() - start)

    def run(self, out, previous: LaunchedStep | None) -> torch.Tensor:
        """Replay decode step `out` (num_reqs <= max_batch), its deferred input ids taken from step
        `previous`; its hidden states [num_reqs, hidden], a view of the graph's output, valid until
        the next replay."""
        n = out.num_reqs
        batch = self.sizes[bisect.bisect_left(self.sizes, n)]
        self.inputs.stage(out, batch)
        if out.num_deferred:
            fill_deferred_inputs(self.inputs.view("input_ids", n), out, previous)
        graph, hidden = self._graphs[batch]
        graph.replay()
        return hidden[:n]

