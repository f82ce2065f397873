"""The model runner on a CUDA GPU: the step's arrays are copied to the device, decode steps replay
captured CUDA graphs (unless enforce_eager), every other step runs the model eagerly. Logits and
sampling are the CPU runner's, on GPU tensors."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from kvserve.gpu.graphs import DecodeGraphs
from kvserve.lora.batch import LoRABatch
from kvserve.model_runner import LaunchedStep, ModelRunner, fill_deferred_inputs
from kvserve.models import AttentionMetadata


class CudaModelRunner(ModelRunner):
    asynchronous = True

    def __init__(self, model: nn.Module, kv_caches: list[tuple[torch.Tensor, torch.Tensor]], vocab_size: int,
                 eos_token_ids: Sequence[int], device: torch.device, *, max_decode_batch: int, max_model_len: int,
                 block_size: int, enforce_eager: bool):
        super().__init__(model, kv_caches, vocab_size, eos_token_ids, device)
        self.graphs = None
        if not enforce_eager:
            self.graphs = DecodeGraphs(model, kv_caches, max_decode_batch, math.ceil(max_model_len / block_size),
                                       device)
            self.graphs.capture()

    def forward(self, out, previous: LaunchedStep | None, lora: LoRABatch | None) -> torch.Tensor:
        # The graphs hold no LoRA deltas: a step with adapters runs eagerly.
        if self.graphs is not None and lora is None and out.num_tokens == out.num_reqs <= self.graphs.max_batch:
            return self.graphs.run(out, previous)

        def to_device(array) -> torch.Tensor:
            return torch.from_numpy(array).to(self.device, non_blocking=True)

        metadata = AttentionMetadata(slot_mapping=to_device(out.slot_mapping), block_table=to_device(out.block_table),
                                     seq_lens=to_device(out.seq_lens), query_start_loc=to_device(out.query_start_loc))
        input_ids = to_device(out.input_ids)
        if out.num_deferred:
            fill_deferred_inputs(input_ids, out, previous)
        return self.model(input_ids, to_device(out.positions), self.kv_caches, metadata, lora)
