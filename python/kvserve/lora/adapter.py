"""A LoRA adapter read from its PEFT directory (adapter_config.json, adapter_model.safetensors),
as the deltas it adds to the model's linear layers:

    out += x @ A^T @ (scaling * B)^T        A [r, in], B [out, r], scaling = lora_alpha / r
                                            (lora_alpha / sqrt(r) under use_rslora)

The model fuses projections (q, k and v in qkv_proj; gate and up in gate_up_proj), so an adapter's
parts of one fused layer become one delta: their A stacked, [r_q + r_k + r_v, in], and their B
block-diagonal, [out, r_q + r_k + r_v] (zero where a part's output meets another's rank), which
adds every part in two products. What kvserve does not apply is refused by name: DoRA, LoRA bias,
modules_to_save, adapters of the embedding or the LM head, ranks above max_lora_rank.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from kvserve.lora.request import LoRARequest
from kvserve.models.layers.linear import Linear
from kvserve.models.weight_loading import fused_part

_PREFIX = "base_model.model."
_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<half>[AB])\.weight")


@dataclass
class Delta:
    """One linear layer's delta: out += x @ a^T @ b^T."""

    a: torch.Tensor  # [rank, in]
    b: torch.Tensor  # [out, rank], scaling folded in


@dataclass
class LoRAAdapter:
    request: LoRARequest
    deltas: dict[Linear, Delta]  # by the model's layer
    rank: int  # the largest of its layers'
    # The deltas as the model's CPU decoder stack takes them: (stack, ops.DecoderLoRA), built by the
    # model on first use (models/llama.py), dropped with the adapter.
    stack_deltas: tuple | None = field(default=None, compare=False, repr=False)


def _read_config(directory: Path) -> dict:
    path = directory / "adapter_config.json"
    if not path.is_file():
        raise ValueError(f"LoRA adapter {str(directory)!r}: no adapter_config.json (a PEFT adapter directory "
                         f"holds adapter_config.json and adapter_model.safetensors)")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"LoRA adapter {str(directory)!r}: adapter_config.json cannot be read: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"LoRA adapter {str(directory)!r}: adapter_config.json is not a JSON object")
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"LoRA adapter {str(directory)!r}: peft_type {config['peft_type']!r} is not LORA")
    refused = [name for name, on in (("use_dora", config.get("use_dora")),
                                      ("bias", config.get("bias", "none") != "none"),
                                      ("modules_to_save", config.get("modules_to_save")),
                                      ("fan_in_fan_out", config.get("fan_in_fan_out"))) if on]
    if refused:
        raise ValueError(f"LoRA adapter {str(directory)!r}: kvserve does not apply {', '.join(refused)}")
    return config


def _alpha(config: dict, module: str) -> float:
    """lora_alpha, or alpha_pattern's value for a module its key names (PEFT matches a key against
    the module name's end)."""
    for pattern, alpha in (config.get("alpha_pattern") or {}).items():
        if re.fullmatch(rf"(.*\.)?({pattern})", module):
            return float(alpha)
    return float(config.get("lora_alpha", 8))


def load_adapter(request: LoRARequest, model: nn.Module, max_rank: int) -> LoRAAdapter:
    """`request`'s adapter for `model` (its dtype and device); ValueError naming what does not fit."""
    directory = Path(request.lora_path).expanduser()
    config = _read_config(directory)
    weights_path = directory / "adapter_model.safetensors"
    if not weights_path.is_file():
        raise ValueError(f"LoRA adapter {str(directory)!r}: no adapter_model.safetensors")
    try:
        tensors = load_file(weights_path)
    except Exception as e:  # safetensors' own error for a damaged file; an OSError for an unreadable one
        raise ValueError(f"LoRA adapter {str(directory)!r}: adapter_model.safetensors cannot be read: {e}") from None
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.fullmatch(key.removeprefix(_PREFIX))
        if match is None:
            raise ValueError(f"LoRA adapter {str(directory)!r}: tensor {key!r} is not a LoRA A or B weight kvserve "
                             f"applies (adapters of the embedding are not)")
        halves.setdefault(match["module"], {})[match["half"]] = tensor
    modules = dict(model.named_modules())
    parts: dict[Linear, list[tuple[int, torch.Tensor, torch.Tensor]]] = {}
    for name, pair in halves.items():
        if set(pair) != {"A", "B"}:
            raise ValueError(f"LoRA adapter {str(directory)!r}: {name} has lora_{''.join(pair)} only")
        layer, index = _layer(name, modules, model)
        a, b = pair["A"], pair["B"]
        rank = a.shape[0]
        if a.dim() != 2 or b.dim() != 2 or tuple(a.shape) != (rank, layer.input_size) or \
                tuple(b.shape) != (layer.output_sizes[index], rank):
            raise ValueError(f"LoRA adapter {str(directory)!r}: {name} has A {list(a.shape)} and B {list(b.shape)}, "
                             f"expected [r, {layer.input_size}] and [{layer.output_sizes[index]}, r]")
        if rank > max_rank:
            raise ValueError(f"LoRA adapter {str(directory)!r}: {name} has rank {rank}, above max_lora_rank "
                             f"{max_rank}")
        scaling = _alpha(config, name) / (math.sqrt(rank) if config.get("use_rslora") else rank)
        parts.setdefault(layer, []).append((index, a.float(), b.float() * scaling))
    if not parts:
        raise ValueError(f"LoRA adapter {str(directory)!r} holds no LoRA weights")
    deltas = {layer: _fused(layer, entries) for layer, entries in parts.items()}
    return LoRAAdapter(request, deltas, max(d.a.shape[0] for d in deltas.values()))


def _layer(name: str, modules: dict[str, nn.Module], model: nn.Module) -> tuple[Linear, int]:
    """The model's linear layer a checkpoint module name adapts, and which of its fused parts."""
    fused = fused_part(name, modules, getattr(model, "packed_modules", {}))
    _, layer, index = fused if fused is not None else (name, modules.get(name), 0)
    if not isinstance(layer, Linear) or name.split(".")[-1] == "lm_head":
        raise ValueError(f"LoRA adapter module {name!r} is not a linear layer of the decoder kvserve adapts")
    return layer, index


def _fused(layer: Linear, entries: list[tuple[int, torch.Tensor, torch.Tensor]]) -> Delta:
    entries.sort(key=lambda entry: entry[0])
    a = torch.cat([entry[1] for entry in entries])
    b = torch.zeros(sum(layer.output_sizes), a.shape[0])
    column = 0
    for index, part_a, part_b in entries:
        row = sum(layer.output_sizes[:index])
        b[row:row + part_b.shape[0], column:column + part_a.shape[0]] = part_b
        column += part_a.shape[0]
    dtype, device = layer.dtype, layer.device
    return Delta(a.to(device=device, dtype=dtype).contiguous(), b.to(device=device, dtype=dtype).contiguous())
