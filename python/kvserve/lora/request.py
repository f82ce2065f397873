"""LoRARequest: the adapter a request runs with (vLLM's `vllm.lora.request.LoRARequest`)."""

from __future__ import annotations

from dataclasses import dataclass

from kvserve.sampling_params import is_int


@dataclass(frozen=True)
class LoRARequest:
    """`lora_name`: a name for the adapter (the server's model name for it); `lora_int_id`: its id,
    a positive integer, one per adapter (requests of equal ids share the loaded adapter and their
    prefix-cache blocks); `lora_path`: its directory, as PEFT's save_pretrained writes it
    (adapter_config.json and adapter_model.safetensors)."""

    lora_name: str
    lora_int_id: int
    lora_path: str

    def __post_init__(self):
        if not isinstance(self.lora_name, str) or not self.lora_name:
            raise ValueError(f"lora_name must be a non-empty string, got {self.lora_name!r}")
        if not is_int(self.lora_int_id) or self.lora_int_id < 1:
            raise ValueError(f"lora_int_id must be a positive integer, got {self.lora_int_id!r}")
        if not isinstance(self.lora_path, str) or not self.lora_path:
            raise ValueError(f"lora_path must be a non-empty string, got {self.lora_path!r}")
