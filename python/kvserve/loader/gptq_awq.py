"""GPTQ and AWQ checkpoints (config.json's quantization_config, quant_method "gptq" or "awq"): their
4-bit weights as uint4 codes with a scale and offset a group of 32 (kvserve.uint4), value for value.

Each projection comes as int32 words of eight 4-bit values, the low bits first, with float16 scales
and packed zero points a group of `group_size` input features (-1: one group a row):

    GPTQ  qweight [K / 8, N]  packed along K      qzeros [K / g, N / 8]  scales [K / g, N]   g_idx [K]
    AWQ   qweight [K, N / 8]  packed along N      qzeros [K / g, N / 8]  scales [K / g, N]
          (AWQ's eight columns of a word in the order 0 2 4 6 1 3 5 7)

and stands for (q - z) * s, z the zero point (GPTQ's checkpoint format "gptq" stores z - 1). As
uint4 groups: scale s and offset -z s, both exact in float32, repeated for each group of 32 in one of
`group_size`. Act-order GPTQ (desc_act, whose g_idx permutes the groups) and other bit widths are
refused by name.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch

from kvserve.uint4 import GROUP_SIZE, pack_uint4

_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int32)
# AWQ's word holds columns 0 2 4 6 1 3 5 7; column c of the eight is nibble _AWQ_NIBBLE[c].
_AWQ_NIBBLE = [0, 4, 1, 5, 2, 6, 3, 7]
_PARTS = ("qweight", "qzeros", "scales")


def check_int4_config(quantization_config: dict, refused: str) -> str:
    """The method of a GPTQ or AWQ quantization_config kvserve reads; ValueError (starting with
    `refused`) naming what it does not."""
    method = quantization_config["quant_method"]
    bits = quantization_config.get("bits", quantization_config.get("w_bit"))
    if bits != 4:
        raise ValueError(f"{refused}: {bits}-bit weights; kvserve reads 4-bit GPTQ and AWQ weights")
    group_size = quantization_config.get("group_size", quantization_config.get("q_group_size", 128))
    if group_size != -1 and (not isinstance(group_size, int) or group_size % GROUP_SIZE != 0):
        raise ValueError(f"{refused}: group_size {group_size}; kvserve reads groups of a multiple of {GROUP_SIZE} "
                         f"(or -1, one a row)")
    if method == "gptq":
        if quantization_config.get("desc_act"):
            raise ValueError(f"{refused}: act-order (desc_act) GPTQ weights are not supported")
        if quantization_config.get("checkpoint_format", "gptq") != "gptq":
            raise ValueError(f"{refused}: checkpoint_format {quantization_config['checkpoint_format']!r}; kvserve "
                             f"reads GPTQ's 'gptq' format")
        if quantization_config.get("lm_head"):
            raise ValueError(f"{refused}: a quantized LM head (lm_head) is not supported")
    else:
        if quantization_config.get("version", "gemm").lower() != "gemm":
            raise ValueError(f"{refused}: AWQ version {quantization_config['version']!r}; kvserve reads 'gemm'")
        if not quantization_config.get("zero_point", True):
            raise ValueError(f"{refused}: AWQ weights without zero points are not supported")
    return method


def _nibbles(words: torch.Tensor) -> torch.Tensor:
    """int32 words [..., W] as their eight 4-bit values [..., W, 8], the low bits first."""
    return (words[..., None] >> _SHIFTS) & 15


def _as_uint4(values: torch.Tensor, zeros: torch.Tensor,
              scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, scale, offset) of values [K, N], zero points and scales [K / g, N]."""
    in_features, groups = values.shape[0], scales.shape[0]
    if in_features % groups != 0 or (in_features // groups) % GROUP_SIZE != 0:
        raise ValueError(f"a group of {in_features} / {groups} input features: expected a multiple of {GROUP_SIZE}")
    repeat = in_features // groups // GROUP_SIZE
    scale = scales.float().t().repeat_interleave(repeat, dim=1)
    offset = -(zeros.float().t().repeat_interleave(repeat, dim=1) * scale)
    return pack_uint4(values.t()), scale.contiguous(), offset.contiguous()


def gptq_uint4(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor):
    """(codes, scale, offset) of one GPTQ projection (format "gptq": zero points stored less 1)."""
    values = _nibbles(qweight.t()).reshape(qweight.shape[1], -1).t()  # [K, N]
    zeros = _nibbles(qzeros).reshape(qzeros.shape[0], -1) + 1
    return _as_uint4(values, zeros, scales)


def awq_uint4(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor):
    """(codes, scale, offset) of one AWQ projection."""
    values = _nibbles(qweight)[..., _AWQ_NIBBLE].reshape(qweight.shape[0], -1)  # [K, N]
    zeros = _nibbles(qzeros)[..., _AWQ_NIBBLE].reshape(qzeros.shape[0], -1)
    return _as_uint4(values, zeros, scales)


def int4_weights(weights: Iterable[tuple[str, torch.Tensor]], method: str,
                 bias_free: set[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """The checkpoint's tensors with each projection's qweight, qzeros and scales in place of its
    weight as uint4 codes, weight_scale and weight_offset (Linear.prepare_uint4's parameters), once all
    three have come; a GPTQ g_idx is checked to be the plain order and dropped, and so are biases of
    zeros named in `bias_free` (AutoGPTQ writes them for projections that have none)."""
    convert = gptq_uint4 if method == "gptq" else awq_uint4
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in weights:
        prefix, _, part = name.rpartition(".")
        if part == "g_idx":
            _check_plain_order(name, tensor)
            continue
        if name in bias_free and not tensor.any():
            continue
        if part not in _PARTS:
            yield name, tensor
            continue
        parts = pending.setdefault(prefix, {})
        parts[part] = tensor
        if len(parts) == len(_PARTS):
            del pending[prefix]
            try:
                codes, scale, offset = convert(parts["qweight"], parts["qzeros"], parts["scales"])
            except (RuntimeError, ValueError) as error:
                raise ValueError(f"{prefix}: its {method.upper()} tensors do not fit together: {error}") from error
            yield f"{prefix}.weight", codes
            yield f"{prefix}.weight_scale", scale
            yield f"{prefix}.weight_offset", offset
    for prefix, parts in pending.items():
        raise ValueError(f"{prefix}: the checkpoint has its {sorted(parts)} but not "
                         f"{sorted(set(_PARTS) - set(parts))}")


def _check_plain_order(name: str, g_idx: torch.Tensor) -> None:
    """A g_idx that assigns input feature k to group k // group_size (what desc_act=False writes)."""
    if len(g_idx) == 0:
        return
    group_size = len(g_idx) // (int(g_idx.max()) + 1)
    if not torch.equal(g_idx.long(), torch.arange(len(g_idx)) // max(group_size, 1)):
        raise ValueError(f"{name}: its groups are not in input order (act-order GPTQ), which kvserve does not read")
