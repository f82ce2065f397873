"""CUDA graphs for decode steps (every request one new token), for each batch size of a ladder, 1,
2, 4, 8, ... up to the largest batch, captured once; a step of n requests replays the graphs of the
smallest batch of at least n rows, its inputs padded (decode_inputs.py).

A decode step of a large model is hundreds of short kernels; replaying them as graphs removes the
launch overhead that would otherwise leave the GPU idle between them. Graphs capture the model's
forward pass only: the logits and the sampler run after it, on the rows that are real.

Each batch size is two graphs: the embedding and the first FIRST_PIECE_LAYERS layers, then the rest.
Replaying an 8B model's ~300-kernel graph took the host 0.13 ms (H100 profile in bench/README.md),
on the path from one step's tokens to the next step's start, while the GPU waits: a short first
graph should start the GPU sooner, the host launching the long one while the GPU runs it (not yet
timed on a GPU).
"""

from __future__ import annotations

import bisect
import logging
import time

import torch
from torch import nn

from kvserve.gpu.decode_inputs import DecodeInputs
from kvserve.model_runner import LaunchedStep, fill_deferred_inputs
from kvserve.models.llama import LayerPass

logger = logging.getLogger("kvserve")

# Layers in a step's first graph: enough GPU time (~0.2 ms a layer for an 8B model at batch 1) to
# cover the host's launch of the second.
FIRST_PIECE_LAYERS = 2


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
        # batch -> (its graphs in launch order, the pass they hand on, the last one's output)
        self._graphs: dict[int, tuple[list[torch.cuda.CUDAGraph], LayerPass, torch.Tensor]] = {}

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every batch size, the largest first so that the smaller ones reuse its memory."""
        start, pool = time.perf_counter(), None
        layers = len(self.kv_caches)
        bounds = piece_bounds(layers, FIRST_PIECE_LAYERS)
        for batch in reversed(self.sizes):
            input_ids, positions = self.inputs.view("input_ids", batch), self.inputs.view("positions", batch)
            metadata = self.inputs.metadata(batch)
            # Outside the capture first: lazy allocations (cuBLAS workspaces, the attention's split
            # workspace) must not happen inside it.
            self.model(input_ids, positions, self.kv_caches, metadata)
            torch.cuda.synchronize()
            graphs, state = [], None
            for first, stop in bounds:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    state = self.model.begin(input_ids, positions, metadata) if state is None else state
                    self.model.run_layers(state, self.kv_caches, first, stop)
                    hidden = self.model.end(state) if stop == layers else None
                pool = graph.pool()
                graphs.append(graph)
            # `state` holds the tensors one graph hands the next: kept with them.
            self._graphs[batch] = (graphs, state, hidden)
        torch.cuda.synchronize()
        logger.info("captured CUDA graphs for decode batches %s in %.1f s", self.sizes, time.perf_counter() - start)

    def run(self, out, previous: LaunchedStep | None) -> torch.Tensor:
        """Replay decode step `out` (num_reqs <= max_batch), its deferred input ids taken from step
        `previous`; its hidden states [num_reqs, hidden], a view of the graphs' output, valid until
        the next replay."""
        n = out.num_reqs
        batch = self.sizes[bisect.bisect_left(self.sizes, n)]
        self.inputs.stage(out, batch)
        if out.num_deferred:
            fill_deferred_inputs(self.inputs.view("input_ids", n), out, previous)
        graphs, _, hidden = self._graphs[batch]
        for graph in graphs:
            graph.replay()
        return hidden[:n]


def piece_bounds(layers: int, first_piece: int) -> list[tuple[int, int]]:
    """(first, stop) layer ranges of a step's graphs: the first `first_piece` layers, then the rest
    (one range when that is all of them)."""
    if layers < 1 or first_piece < 1:
        raise ValueError(f"layers and first_piece: expected >= 1, got {layers} and {first_piece}")
    return [(0, layers)] if layers <= first_piece else [(0, first_piece), (first_piece, layers)]
