"""Checkpoint tensors of a GGUF file, under their Hugging Face names: dequantized to float32, or for
the blocks a model keeps quantized (GgufWeights.kept), their codes under the weight's name and their
scales under name + "_scale": Q4_0, Q4_1 and Q4_K blocks as uint4 codes with offsets under name +
"_offset" (loader/gguf_uint4.py), symmetric 8- to 3-bit blocks (IQ4's table values too) as int8 codes
(loader/gguf_int8.py).

llama.cpp's converter reorders the rows of Llama's q_proj and k_proj (bias included) so that each
head's two rotary halves are interleaved pairs:

    Hugging Face rows of one head: [x0 x1 ... x(D/2-1) | y0 y1 ... y(D/2-1)]
    GGUF rows of that head:        [x0 y0 x1 y1 ... x(D/2-1) y(D/2-1)]

undo_rope_permutation() puts them back. Quantization blocks run along a row, so the reordering of
whole rows commutes with dequantization, and applies to codes, scales and offsets alike.
"""

from __future__ import annotations

import re
import warnings
from typing import Iterator

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from kvserve.loader.gguf_config import ROPE_FACTORS_TENSOR
from kvserve.loader.gguf_int8 import INT8_TYPES, gguf_int8
from kvserve.loader.gguf_uint4 import UINT4_TYPES, gguf_uint4
from kvserve.model_config import ModelConfig

_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}

_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}

_BLOCK_TENSOR = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face name of a GGUF tensor, or None for one kvserve does not map."""
    match = _BLOCK_TENSOR.match(gguf_name)
    if match:
        layer, kind, param = match.groups()
        return f"model.layers.{layer}.{_BLOCK_NAMES[kind]}.{param}" if kind in _BLOCK_NAMES else None
    base, _, param = gguf_name.rpartition(".")
    return f"{_GLOBAL_NAMES[base]}.{param}" if base in _GLOBAL_NAMES else None


def undo_rope_permutation(rows: torch.Tensor, num_heads: int) -> torch.Tensor:
    """GGUF's interleaved q/k rows [num_heads * D, ...] back to Hugging Face's half-split order."""
    shape = rows.shape
    return rows.reshape(num_heads, shape[0] // num_heads // 2, 2, *shape[1:]).transpose(1, 2).reshape(shape)


class GgufWeights:
    """(Hugging Face name, tensor) for every tensor of the file, when iterated; float32 unless stored as
    F16, or codes for the names in `kept` (set it before iterating; each a tensor of UINT4_TYPES or
    INT8_TYPES)."""

    def __init__(self, reader: GGUFReader, config: ModelConfig, arch: str):
        self.reader, self.config, self.arch = reader, config, arch
        self.kept: set[str] = set()

    def coded_names(self) -> dict[str, set[str]]:
        """The Hugging Face names of the tensors stored as blocks that load as codes: "uint4" (4-bit
        blocks, UINT4_TYPES) and "int8" (symmetric 8- to 3-bit ones, INT8_TYPES)."""
        return {kind: {hf_name(t.name) for t in self.reader.tensors if t.tensor_type in types} - {None}
                for kind, types in (("uint4", UINT4_TYPES), ("int8", INT8_TYPES))}

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for tensor in self.reader.tensors:
            if tensor.name == ROPE_FACTORS_TENSOR:
                continue
            name = hf_name(tensor.name)
            if name is None:
                raise ValueError(f"{self.reader.data.filename}: GGUF tensor {tensor.name!r} has no place in "
                                 f"{self.config.architecture}")
            rows = int(tensor.shape[-1]) if len(tensor.shape) > 1 else 1  # GGUF lists dimensions innermost first
            if name in self.kept and tensor.tensor_type in UINT4_TYPES:
                codes, scale, offset = gguf_uint4(tensor.data, tensor.tensor_type, rows)
                parts = {name: codes, f"{name}_scale": scale, f"{name}_offset": offset}
            elif name in self.kept and tensor.tensor_type in INT8_TYPES:
                codes, scale = gguf_int8(tensor.data, tensor.tensor_type, rows)
                parts = {name: codes, f"{name}_scale": scale}
            else:
                parts = {name: _to_torch(tensor)}
            for part_name, values in parts.items():
                yield part_name, self._hf_rows(name, values)

    def _hf_rows(self, name: str, values: torch.Tensor) -> torch.Tensor:
        """The rows of tensor `name`'s values (or codes, scales, offsets) in Hugging Face's order."""
        if self.arch == "llama" and ".self_attn.q_proj." in name:
            return undo_rope_permutation(values, self.config.num_attention_heads)
        if self.arch == "llama" and ".self_attn.k_proj." in name:
            return undo_rope_permutation(values, self.config.num_key_value_heads)
        return values


def _to_torch(tensor) -> torch.Tensor:
    shape = tuple(reversed(tensor.shape.tolist()))  # GGUF lists dimensions innermost first
    if tensor.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
        array = tensor.data.reshape(shape)
    else:
        array = dequantize(tensor.data, tensor.tensor_type).reshape(shape)
    with warnings.catch_warnings():
        # The mmapped file is read-only; kvserve only reads from these tensors (they are copied into
        # the model's parameters), so a zero-copy view is safe.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.asarray(array))
