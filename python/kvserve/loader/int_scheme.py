"""The integer weights of a GPTQ, AWQ or compressed-tensors checkpoint, as its quantization_config
describes them: what the loader needs to read each projection's tensors as uint4 or int8 codes
(kvserve.loader.gptq_awq, kvserve.loader.compressed_tensors)."""

from __future__ import annotations

from dataclasses import dataclass

from kvserve import int8, uint4


@dataclass(frozen=True)
class IntScheme:
    method: str        # "gptq", "awq" or "compressed-tensors"
    bits: int          # 4 (uint4 codes) or 8 (int8 codes)
    group_size: int    # input features a scale (and zero point) serves; -1: a row
    symmetric: bool    # no zero points (every value a multiple of its scale)
    act_order: bool    # input features quantized in another order than their own (g_idx gives each one's group)
    packed: bool = True  # compressed-tensors: "pack-quantized" (else "int-quantized": int8 weights as they are)


def check_group_size(bits: int, group_size, refused: str) -> None:
    """ValueError (starting with `refused`) unless a group of `group_size` input features is whole
    groups of kvserve's codes of `bits` (uint4: 32, int8: 16), or -1 (a row)."""
    group = uint4.GROUP_SIZE if bits == 4 else int8.GROUP_SIZE
    if group_size != -1 and (not isinstance(group_size, int) or group_size <= 0 or group_size % group != 0):
        raise ValueError(f"{refused}: group_size {group_size}; kvserve reads {bits}-bit groups of a multiple of "
                         f"{group} (or -1, one a row)")


def int_scheme(quantization_config: dict, refused: str) -> IntScheme:
    """The scheme of a GPTQ, AWQ or integer compressed-tensors quantization_config; ValueError (starting
    with `refused`) naming what kvserve does not read."""
    if quantization_config["quant_method"] == "compressed-tensors":
        from kvserve.loader.compressed_tensors import compressed_int_scheme

        return compressed_int_scheme(quantization_config, refused)
    from kvserve.loader.gptq_awq import gptq_awq_scheme

    return gptq_awq_scheme(quantization_config, refused)
