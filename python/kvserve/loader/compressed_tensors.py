"""compressed-tensors' integer weights (config.json's quantization_config of quant_method
"compressed-tensors": llm-compressor's W4A16, W8A16 and W8A8 checkpoints), read as uint4 codes (4
bits) and int8 codes (8 bits, symmetric), value for value. (Its fp8 weights are read by
kvserve.quantization.) Quantized input activations (W8A8's int8 tokens) are taken as they are, as
kvserve takes an fp8 checkpoint's: the products multiply the activations unrounded.

Format "pack-quantized": each projection [N, K] comes as

    weight_packed      int32 [N, K / w]    w = 32 / b values of b bits a word along K, the low bits
                                           first, each value q stored as q + 2^(b-1)
    weight_scale       [N, K / g]          a scale a group of g input features (strategy "group";
                                           "channel": [N, 1])
    weight_zero_point  int32 [N / w, K / g]  asymmetric schemes only: zero points z packed along N
    weight_g_idx       [K]                 act order "group" only: each input feature's group
    weight_shape       [2]                 N, K

and stands for (q - z) s. Format "int-quantized" (8 bits): weight int8 [N, K] (q itself) and
weight_scale, a symmetric scheme's zero points, if stored, all zeros. As uint4 groups: codes q + 8
with scale s and offset -(z + 8) s, both exact in float32 (z = 0 when symmetric); 8-bit symmetric
ones as int8 groups: codes q and scale s. Each value is repeated for kvserve's groups of 32 (16) in
one of g. Other formats, quantized outputs, targets other than every Linear and ignored modules other
than the LM head are refused by name.
"""

from __future__ import annotations

import torch

from kvserve import int8
from kvserve.loader.gptq_awq import Converter, as_uint4, unpack_fields, per_group, act_order
from kvserve.loader.int_scheme import IntScheme, check_group_size

_PACKED_PARTS = ("weight_packed", "weight_scale", "weight_shape")
_FORMATS = ("pack-quantized", "int-quantized")


def _lm_head_only(ignored: list) -> bool:
    return all(name in ("lm_head", "re:.*lm_head", "re:lm_head") for name in ignored)


def compressed_int_scheme(quantization_config: dict, refused: str) -> IntScheme:
    """The scheme of an integer compressed-tensors quantization_config (its format named at the top, or
    by each config group, as newer writers name it); ValueError (starting with `refused`) naming what
    kvserve does not read."""
    if not _lm_head_only(quantization_config.get("ignore") or []):
        raise ValueError(f"{refused}: ignore {quantization_config['ignore']}; kvserve reads checkpoints whose every "
                         f"decoder projection is quantized (only the LM head ignored)")
    schemes = set()
    for name, group in (quantization_config.get("config_groups") or {}).items():
        weights = group.get("weights") or {}
        where = f"{refused}: config group {name!r}"
        fmt = group.get("format") or quantization_config.get("format")
        if fmt not in _FORMATS:
            raise ValueError(f"{where}: format {fmt!r}; kvserve reads integer weights 'pack-quantized' or (8 bits) "
                             f"'int-quantized'")
        packed = fmt == "pack-quantized"
        if group.get("output_activations"):
            raise ValueError(f"{where} quantizes outputs; kvserve reads schemes that quantize weights (and inputs)")
        if group.get("targets") != ["Linear"]:
            raise ValueError(f"{where} targets {group.get('targets')}; kvserve reads schemes that target ['Linear']")
        bits, strategy = weights.get("num_bits"), weights.get("strategy")
        if weights.get("type") != "int" or bits not in (4, 8) or strategy not in ("group", "channel"):
            raise ValueError(f"{where} quantizes weights as {weights}; kvserve reads 4- and 8-bit integer weights "
                             f"with a scale a group or a row")
        symmetric = weights.get("symmetric", True)
        if bits == 8 and not symmetric:
            raise ValueError(f"{where}: asymmetric 8-bit weights; kvserve reads symmetric ones")
        if not packed and bits != 8:
            raise ValueError(f"{where}: {bits}-bit weights 'int-quantized'; kvserve reads them 'pack-quantized'")
        if weights.get("dynamic"):
            raise ValueError(f"{where}: dynamic weight scales are not supported")
        order = weights.get("actorder")
        if order not in (None, "group", "weight"):
            raise ValueError(f"{where}: actorder {order!r}; kvserve reads 'group', 'weight' or none")
        group_size = weights.get("group_size") if strategy == "group" else -1
        check_group_size(bits, group_size, refused)
        schemes.add(IntScheme("compressed-tensors", bits, group_size, bool(symmetric), order == "group", packed))
    if len(schemes) != 1:
        raise ValueError(f"{refused}: {len(schemes)} weight schemes in config_groups; kvserve reads one for every "
                         f"projection")
    return schemes.pop()


def compressed_layout(scheme: IntScheme) -> tuple[tuple[str, ...], Converter]:
    """The tensors a projection of a compressed-tensors checkpoint of `scheme` comes as, and their converter."""
    wanted = (_PACKED_PARTS if scheme.packed else ("weight", "weight_scale")) + (
        () if scheme.symmetric else ("weight_zero_point",)) + (("weight_g_idx",) if scheme.act_order else ())

    def convert(parts: dict[str, torch.Tensor]) -> tuple:
        scales = parts["weight_scale"].t()  # [K / g, N], as GPTQ's
        bias = 1 << (scheme.bits - 1)
        if scheme.packed:
            rows, features = (int(n) for n in parts["weight_shape"])
            stored = unpack_fields(parts["weight_packed"], scheme.bits).reshape(parts["weight_packed"].shape[0], -1)
            values = stored[:, :features]  # q + 2^(b-1), [N, K]
            if values.shape != (rows, features):
                raise ValueError(f"weight_packed holds {tuple(stored.shape)} values, weight_shape says "
                                 f"{(rows, features)}")
        else:
            rows, features = parts["weight"].shape
            values = parts["weight"].long() + bias
        order = act_order(parts["weight_g_idx"], scales.shape[0]) if scheme.act_order else None
        if order is not None:
            values = values[:, order]
        if scheme.bits == 8:
            codes = (values - bias).to(torch.int8).contiguous()
            return codes, per_group(scales, features, int8.GROUP_SIZE).contiguous(), None, order
        if scheme.symmetric:
            zeros = torch.full(scales.shape, bias)
        else:  # packed along N: [N / w, K / g] words
            zeros = unpack_fields(parts["weight_zero_point"].t(), scheme.bits).reshape(scales.shape[0], -1)[:, :rows]
        # (q - z) s = (u - (z + 8)) s, u = q + 8 the stored field, z + 8 the stored zero point's
        return *as_uint4(values.t(), zeros, scales), order

    return wanted, convert
