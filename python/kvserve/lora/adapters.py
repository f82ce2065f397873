"""The engine's loaded LoRA adapters: at most max_loras of them, by lora_int_id; loading another
drops the least recently used, and a server drops one it stops serving (requests running with an
adapter keep it until they end)."""

from __future__ import annotations

import logging
from collections import OrderedDict

from torch import nn

from kvserve.lora.adapter import LoRAAdapter, load_adapter
from kvserve.lora.request import LoRARequest
from kvserve.sampling_params import is_int

logger = logging.getLogger("kvserve")


class LoRAAdapters:
    def __init__(self, model: nn.Module, max_loras: int, max_lora_rank: int):
        for name, value in (("max_loras", max_loras), ("max_lora_rank", max_lora_rank)):
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.model = model
        self.max_loras = max_loras
        self.max_lora_rank = max_lora_rank
        self._loaded: OrderedDict[int, LoRAAdapter] = OrderedDict()
        # Every id ever seen, loaded or dropped: an id is one adapter for the engine's life (its
        # prefix-cache blocks are keyed by it).
        self._seen: dict[int, tuple[str, str]] = {}

    def get(self, request: LoRARequest) -> LoRAAdapter:
        """The adapter `request` names, loaded on first use; ValueError where it cannot be, or where
        its id names another adapter already."""
        if not isinstance(request, LoRARequest):
            raise ValueError(f"lora_request must be a LoRARequest, got {type(request).__name__}")
        seen = self._seen.get(request.lora_int_id)
        if seen is not None and seen != (request.lora_name, request.lora_path):
            raise ValueError(f"lora_int_id {request.lora_int_id} is adapter {seen[0]!r} ({seen[1]}); "
                             f"{request.lora_name!r} needs an id of its own")
        adapter = self._loaded.get(request.lora_int_id)
        if adapter is not None:
            self._loaded.move_to_end(request.lora_int_id)
            return adapter
        adapter = load_adapter(request, self.model, self.max_lora_rank)
        if len(self._loaded) == self.max_loras:
            self._loaded.popitem(last=False)
        self._loaded[request.lora_int_id] = adapter
        self._seen[request.lora_int_id] = (request.lora_name, request.lora_path)
        logger.info("loaded LoRA adapter %r (id %d, rank %d) from %s", request.lora_name, request.lora_int_id,
                    adapter.rank, request.lora_path)
        return adapter

    def drop(self, lora_int_id: int) -> None:
        """Let go of a loaded adapter (its id stays its own)."""
        adapter = self._loaded.pop(lora_int_id, None)
        if adapter is not None:
            logger.info("dropped LoRA adapter %r (id %d)", adapter.request.lora_name, lora_int_id)
