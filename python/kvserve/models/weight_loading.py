"""Copy named checkpoint tensors into a model's parameters, fusing stacked projections.

A checkpoint name either is a parameter's name, or names one part of a fused projection:
    model.layers.3.self_attn.k_proj.weight  ->  rows 1 of 3 of model.layers.3.self_attn.qkv_proj.weight
Every parameter (every part of a fused one) must be written exactly once; anything else is an error.
A parameter the parts share (Linear.input_order: they take one input) comes with each part, and
every part's must be the same.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch
from torch import nn

from kvserve.models.layers.linear import Linear

# Tensors some checkpoints carry that the model recomputes.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def load_named_weights(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]],
                       packed_modules: dict[str, tuple[str, int]], skip: set[str]) -> None:
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    expected = _expected_parts(modules)
    loaded: set[tuple[str, int]] = set()
    shared_written: set[str] = set()
    with torch.no_grad():
        for name, tensor in weights:
            if name in skip or name.endswith(_IGNORED_SUFFIXES):
                continue
            part = _locate(name, params, modules, packed_modules)
            if part is None:
                raise ValueError(f"checkpoint tensor {name!r} matches no parameter of {type(model).__name__}")
            param_name, index, target = part
            if name.endswith(".weight_scale") and target.dim() == 1:
                tensor = _row_scales(tensor, target)
            if tuple(target.shape) != tuple(tensor.shape):
                raise ValueError(f"checkpoint tensor {name!r}: expected shape {list(target.shape)}, "
                                 f"got {list(tensor.shape)}")
            if (param_name, index) in loaded:
                raise ValueError(f"checkpoint tensor {name!r} appears twice; expected each tensor once")
            shared = target is params.get(param_name) and len(expected[param_name]) > 1
            if shared and param_name in shared_written:
                if not torch.equal(target, tensor.to(target.device, target.dtype)):
                    raise ValueError(f"checkpoint tensor {name!r} differs from the other parts' of {param_name!r}, "
                                     f"which they share")
            else:
                target.copy_(tensor)
            if shared:
                shared_written.add(param_name)
            loaded.add((param_name, index))
    missing = sorted(_checkpoint_name(p, i, len(parts), packed_modules)
                     for p, parts in expected.items() for i in parts if (p, i) not in loaded)
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise ValueError(f"checkpoint is missing {len(missing)} tensor(s) of {type(model).__name__}: {shown}")


def linear_parts(model: nn.Module, packed_modules: dict[str, tuple[str, int]]) -> Iterator[tuple[Linear, list[str]]]:
    """Each Linear of the model with the checkpoint names of its weight's parts, in order."""
    for module_name, module in model.named_modules():
        if isinstance(module, Linear):
            count = len(module.output_sizes)
            yield module, [_checkpoint_name(f"{module_name}.weight", i, count, packed_modules) for i in range(count)]


def _row_scales(scale: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """An fp8 checkpoint's weight scale as a scale a row: one for the tensor ([] or [1]) repeated, or
    one a row ([N] or [N, 1]) as it is."""
    rows = scale.reshape(-1).float()
    return rows.expand(target.shape) if rows.numel() == 1 else rows


def fused_part(module_name: str, modules: dict[str, nn.Module],
               packed_modules: dict[str, tuple[str, int]]) -> tuple[str, nn.Module | None, int] | None:
    """(the fused module's name, the module, which part) for a checkpoint projection's module name
    that the model fuses (model.layers.3.self_attn.k_proj -> ...qkv_proj, part 1); None for others."""
    module_path, _, leaf = module_name.rpartition(".")
    if leaf not in packed_modules:
        return None
    fused_name, index = packed_modules[leaf]
    return f"{module_path}.{fused_name}", modules.get(f"{module_path}.{fused_name}"), index


def _locate(name, params, modules, packed_modules) -> tuple[str, int, torch.Tensor] | None:
    if name in params:
        return name, 0, params[name]
    prefix, _, rest = name.rpartition(".")  # rest: "weight" or "bias"
    part = fused_part(prefix, modules, packed_modules)
    if part is None:
        return None
    fused_name, module, index = part
    if isinstance(module, Linear) and module.parts is not None and rest in ("weight", "weight_scale", "weight_offset"):
        # A projection in parts of different kinds (Linear.prepare_parts): its own part's codes (or weight).
        name = f"{fused_name}.parts.{index}.{rest}"
        return (name, 0, params[name]) if name in params else None
    param = getattr(module, rest, None) if isinstance(module, Linear) else None
    if param is None:
        return None
    return f"{fused_name}.{rest}", index, module.shard(param, index)


def _checkpoint_name(param_name: str, index: int, num_parts: int, packed_modules) -> str:
    """The checkpoint's name for part `index` of a parameter (_locate in reverse):
    model.layers.1.mlp.gate_up_proj.weight, part 1  ->  model.layers.1.mlp.up_proj.weight"""
    if num_parts == 1:
        return param_name
    prefix, _, rest = param_name.rpartition(".")
    module_path, _, fused_name = prefix.rpartition(".")
    for leaf, (fused, leaf_index) in packed_modules.items():
        if (fused, leaf_index) == (fused_name, index):
            return f"{module_path}.{leaf}.{rest}"
    return f"{param_name}[part {index}]"  # a fused module no checkpoint name maps to


def _expected_parts(modules: dict[str, nn.Module]) -> dict[str, range]:
    parts = {}
    for module_name, module in modules.items():
        count = len(module.output_sizes) if isinstance(module, Linear) else 1
        for param_name, _ in module.named_parameters(recurse=False):
            parts[f"{module_name}.{param_name}" if module_name else param_name] = range(count)
    return parts
