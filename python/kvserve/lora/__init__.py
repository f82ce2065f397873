"""LoRA adapters served over one base model, as vLLM serves them: each request may name its own
adapter (a LoRARequest), and one step batches requests of different adapters and of none.

    request.py   LoRARequest: which adapter a request runs with (vLLM's class)
    adapter.py   an adapter read from its PEFT directory, as deltas of the model's linear layers
    adapters.py  the engine's loaded adapters (max_loras of them, the least recently used goes)
    batch.py     one step's rows grouped by adapter, and the deltas they add to the projections
"""

from kvserve.lora.request import LoRARequest

__all__ = ["LoRARequest"]
