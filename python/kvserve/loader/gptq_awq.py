"""GPTQ and AWQ checkpoints (config.json's quantization_config, quant_method "gptq" or "awq"): their
4-bit weights as uint4 codes with a scale and offset a group of 32 (kvserve.uint4), and GPTQ's
symmetric 8-bit ones as int8 codes with a scale a group of 16 (kvserve.int8), value for value.

Each projection comes as int32 words of 32 / b values of b bits (b = 4 or 8), the low bits first,
with float16 scales and packed zero points a group of `group_size` input features (-1: one group a
row), for 4-bit words (w = 8 values a word):

    GPTQ  qweight [K / w, N]  packed along K      qzeros [K / g, N / w]  scales [K / g, N]   g_idx [K]
    AWQ   qweight [K, N / w]  packed along N      qzeros [K / g, N / w]  scales [K / g, N]
          (AWQ's eight columns of a word in the order 0 2 4 6 1 3 5 7)

and stands for (q - z) * s, z the zero point (GPTQ's checkpoint format "gptq" stores z - 1). As
uint4 groups: scale s and offset -z s, both exact in float32, repeated for each group of 32 in one of
`group_size`. Symmetric 8-bit GPTQ (sym: every z is 128) as int8 groups: codes q - 128 and scale s,
repeated for each group of 16. Asymmetric 8-bit GPTQ, 8-bit AWQ and other bit widths are refused by
name.

Act-order GPTQ (desc_act) quantized the input features in another order than their own, its groups
running over that order: g_idx [K] gives feature k's group. Sorting the features by group (stably)
puts each group's features together; the weight's columns are stored in that order, and the order
itself as the projection's input_order (Linear.product_input gathers the input's columns by it),
as vLLM's GPTQ kernels sort g_idx.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import torch

from kvserve import int8, uint4
from kvserve.loader.int_scheme import IntScheme, check_group_size

# AWQ's word holds columns 0 2 4 6 1 3 5 7; column c of the eight is nibble _AWQ_NIBBLE[c].
_AWQ_NIBBLE = [0, 4, 1, 5, 2, 6, 3, 7]
_PARTS = ("qweight", "qzeros", "scales")


def gptq_awq_scheme(quantization_config: dict, refused: str) -> IntScheme:
    """The scheme of a GPTQ or AWQ quantization_config kvserve reads; ValueError (starting with
    `refused`) naming what it does not."""
    method = quantization_config["quant_method"]
    bits = quantization_config.get("bits", quantization_config.get("w_bit"))
    symmetric = method == "gptq" and quantization_config.get("sym", True)
    if bits == 8 and method == "gptq" and not symmetric:
        raise ValueError(f"{refused}: asymmetric (sym false) 8-bit GPTQ weights; kvserve reads symmetric ones")
    if bits != 4 and (bits, method) != (8, "gptq"):
        raise ValueError(f"{refused}: {bits}-bit weights; kvserve reads 4-bit GPTQ and AWQ weights and 8-bit GPTQ ones")
    group_size = quantization_config.get("group_size", quantization_config.get("q_group_size", 128))
    check_group_size(bits, group_size, refused)
    if method == "gptq":
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
    # GPTQ's checkpoints store zero points even when symmetric.
    return IntScheme(method, bits, group_size, symmetric, bool(quantization_config.get("desc_act")))


def unpack_fields(words: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 words [..., W] as their 32 / bits values of `bits` bits [..., W, 32 / bits], the low bits
    first."""
    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    return (words[..., None] >> shifts) & ((1 << bits) - 1)


def per_group(tensor: torch.Tensor, in_features: int, group: int) -> torch.Tensor:
    """A checkpoint's tensor of a value a group [K / g, N] (scales, zero points) as float32 [N, K / group]:
    each value repeated for kvserve's groups of `group` in one of g."""
    groups = tensor.shape[0]
    if in_features % groups != 0 or (in_features // groups) % group != 0:
        raise ValueError(f"a group of {in_features} / {groups} input features: expected a multiple of {group}")
    return tensor.float().t().repeat_interleave(in_features // groups // group, dim=1)


def as_uint4(values: torch.Tensor, zeros: torch.Tensor,
              scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, scale, offset) of values [K, N], zero points and scales [K / g, N]."""
    scale = per_group(scales, values.shape[0], uint4.GROUP_SIZE)
    offset = -(per_group(zeros, values.shape[0], uint4.GROUP_SIZE) * scale)
    return uint4.pack_uint4(values.t()), scale.contiguous(), offset.contiguous()


def _gptq_values(qweight: torch.Tensor, qzeros: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values [K, N], zero points [K / g, N]) of a GPTQ projection (format "gptq": zero points stored
    less 1)."""
    values = unpack_fields(qweight.t(), bits).reshape(qweight.shape[1], -1).t()
    return values, unpack_fields(qzeros, bits).reshape(qzeros.shape[0], -1) + 1


def act_order(g_idx: torch.Tensor, groups: int) -> torch.Tensor:
    """The input features sorted by their group (g_idx: feature k's; stable, so a group's features keep
    their own order), int64 [K]; ValueError unless each of the `groups` groups holds K / groups."""
    order = torch.argsort(g_idx.long(), stable=True)
    features = len(g_idx)
    if features % groups != 0 or not torch.equal(g_idx.long()[order], torch.arange(features) // (features // groups)):
        raise ValueError(f"its g_idx does not give each of its {groups} groups {features} / {groups} input features")
    return order


def gptq_uint4(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, order: torch.Tensor | None = None):
    """(codes, scale, offset) of one 4-bit GPTQ projection, its columns in `order` (act_order) if given."""
    values, zeros = _gptq_values(qweight, qzeros, 4)
    return as_uint4(values if order is None else values[order], zeros, scales)


def gptq_int8(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, order: torch.Tensor | None = None):
    """(codes, scale) of one symmetric 8-bit GPTQ projection: codes q - 128, its columns in `order` if given."""
    values, zeros = _gptq_values(qweight, qzeros, 8)
    if not (zeros == 128).all():
        raise ValueError("its zero points are not all 128 (asymmetric 8-bit GPTQ), which kvserve does not read")
    codes = ((values if order is None else values[order]).t() - 128).to(torch.int8)
    return codes.contiguous(), per_group(scales, values.shape[0], int8.GROUP_SIZE).contiguous()


def awq_uint4(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor):
    """(codes, scale, offset) of one AWQ projection."""
    values = unpack_fields(qweight, 4)[..., _AWQ_NIBBLE].reshape(qweight.shape[0], -1)  # [K, N]
    zeros = unpack_fields(qzeros, 4)[..., _AWQ_NIBBLE].reshape(qzeros.shape[0], -1)
    return as_uint4(values, zeros, scales)


# A converter: one projection's tensors (by their names after its prefix) -> (codes, scale, offset
# or None, input order or None).
Converter = Callable[[dict[str, torch.Tensor]], tuple]


def _gptq_awq_layout(scheme: IntScheme) -> tuple[tuple[str, ...], Converter]:
    """The tensors a projection of a GPTQ or AWQ checkpoint comes as, and their converter."""
    def convert(parts: dict[str, torch.Tensor]) -> tuple:
        order = act_order(parts["g_idx"], parts["scales"].shape[0]) if scheme.act_order else None
        tensors = (parts["qweight"], parts["qzeros"], parts["scales"])
        if scheme.method == "awq":
            return *awq_uint4(*tensors), None
        if scheme.bits == 8:
            return *gptq_int8(*tensors, order), None, order
        return *gptq_uint4(*tensors, order), order
    return _PARTS + (("g_idx",) if scheme.act_order else ()), convert


def quantized_weights(weights: Iterable[tuple[str, torch.Tensor]], scheme: IntScheme, projections: set[str],
                      bias_free: set[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """The checkpoint's tensors with each projection's quantized tensors (GPTQ's and AWQ's qweight,
    qzeros and scales; compressed-tensors' weight_packed, ...: kvserve.loader.compressed_tensors) in
    place of its weight, as codes, weight_scale and (uint4) weight_offset (the parameters of
    Linear.prepare_uint4, or for 8 bits prepare_int8), once all of them have come; `projections`: the
    last parts of the decoder projections' checkpoint names (q_proj, ...), the modules whose tensors
    these are. With act order (scheme.act_order) its g_idx too, the codes' columns in
    act_order(g_idx) and that order as the projection's input_order (Linear.prepare_input_order).
    Otherwise a g_idx is checked to be the plain order and dropped, and so are biases of zeros named in
    `bias_free` (AutoGPTQ writes them for projections that have none) and a symmetric scheme's zero
    points of zeros (compressed-tensors may store them)."""
    if scheme.method == "compressed-tensors":
        from kvserve.loader.compressed_tensors import compressed_layout

        wanted, convert = compressed_layout(scheme)
    else:
        wanted, convert = _gptq_awq_layout(scheme)
    label = scheme.method.upper() if scheme.method in ("gptq", "awq") else scheme.method
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in weights:
        prefix, _, part = name.rpartition(".")
        if part in ("g_idx", "weight_g_idx") and not scheme.act_order:
            _check_plain_order(name, tensor)
            continue
        if name in bias_free and not tensor.any():
            continue
        if part == "weight_zero_point" and scheme.symmetric:
            if tensor.any():
                raise ValueError(f"{name}: zero points other than 0 in a symmetric scheme")
            continue
        if part not in wanted or prefix.rpartition(".")[2] not in projections:
            yield name, tensor
            continue
        parts = pending.setdefault(prefix, {})
        parts[part] = tensor
        if len(parts) == len(wanted):
            del pending[prefix]
            try:
                codes, scale, offset, order = convert(parts)
            except (RuntimeError, ValueError) as error:
                raise ValueError(f"{prefix}: its {label} tensors do not fit together: {error}") from error
            yield f"{prefix}.weight", codes
            yield f"{prefix}.weight_scale", scale
            if offset is not None:
                yield f"{prefix}.weight_offset", offset
            if order is not None:
                yield f"{prefix}.input_order", order
    for prefix, parts in pending.items():
        raise ValueError(f"{prefix}: the checkpoint has its {sorted(parts)} but not "
                         f"{sorted(set(wanted) - set(parts))}")


def _check_plain_order(name: str, g_idx: torch.Tensor) -> None:
    """A g_idx that assigns input feature k to group k // group_size (what desc_act false writes)."""
    if len(g_idx) == 0:
        return
    group_size = len(g_idx) // (int(g_idx.max()) + 1)
    if not torch.equal(g_idx.long(), torch.arange(len(g_idx)) // max(group_size, 1)):
        raise ValueError(f"{name}: its groups are not in input order, and config.json's quantization_config has no "
                         f"act order")
