"""Weight-only fp8 quantization of the decoder layers' projections: vLLM's `quantization="fp8"`.

    Engine(model, quantization="fp8")          kvserve serve MODEL --quantization fp8

At load, each row of the qkv, o, gate_up and down projections' weights becomes e4m3 codes (8-bit
floats: 3 mantissa bits, magnitudes up to 448) and one float32 scale, the row's largest magnitude
over 448, so that every row uses e4m3's whole range (its 4 significant bits hold a weight to within
1/16 of itself; vLLM's online fp8 takes one scale a tensor, which leaves a row of small weights in
e4m3's coarser subnormals). Products multiply the codes' values by the input in float32 and scale
each output once (kvserve.ops.linear's weight_scale): half a 16-bit weight's bytes to read at
decode, where a CPU's steps wait on memory. The embeddings, the norms and the LM head keep the
model's dtype, as vLLM keeps them.

Runs on the CPU and on CUDA; the outputs are those of the model with each weight replaced by its
code's value times its row's scale (dequantize), not the unquantized model's. On CUDA kvserve's
products multiply the codes' values (exact in 16 bits) and scale each output, as the CPU does, up to
CUDA_CODES_MAX_ROWS rows (kvserve.models.layers.linear); more rows multiply the weight dequantized
to the dtype.

Checkpoints that come with quantized weights load as they are (checkpoint_quantization): GPTQ's, AWQ's
and compressed-tensors' 4-bit ones as uint4 codes and GPTQ's and compressed-tensors' 8-bit ones as
int8 codes (kvserve.loader.gptq_awq, kvserve.loader.compressed_tensors), and fp8 ones, codes and scales:
config.json's quantization_config of quant_method "fp8" (a scale a tensor) or "compressed-tensors"
with 8-bit float weights of strategy "tensor" or "channel" (llm-compressor's FP8 and FP8-dynamic
checkpoints). Activation scales (static schemes) are not used: the products take the activations
as they are.
"""

from __future__ import annotations

import torch

QUANTIZATIONS = ("fp8", "gptq", "awq", "compressed-tensors", "gguf")
# Methods whose weights come quantized in the checkpoint, not quantized at load (compressed-tensors:
# its integer weights; its fp8 ones are "fp8").
CHECKPOINT_ONLY = ("gptq", "awq", "compressed-tensors")
# e4m3's largest finite magnitude (torch.finfo(torch.float8_e4m3fn).max).
E4M3_MAX = 448.0


# vLLM's names for the same checkpoints run by its Marlin kernels: kvserve runs them with its own.
QUANTIZATION_ALIASES = {"gptq_marlin": "gptq", "awq_marlin": "awq"}


def check_quantization(quantization: str | None) -> str | None:
    """kvserve's name for a quantization method (QUANTIZATIONS, or one of vLLM's aliases of them);
    ValueError for a method kvserve does not have."""
    quantization = QUANTIZATION_ALIASES.get(quantization, quantization)
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {list(QUANTIZATIONS)} (or vLLM's "
                         f"{list(QUANTIZATION_ALIASES)}) or None, got {quantization!r}")
    return quantization


def checkpoint_quantization(quantization_config, source: str = "config.json") -> str | None:
    """"fp8", "gptq", "awq" or "compressed-tensors" (its integer weights) for a quantization_config whose
    weights kvserve reads as they are (module docstring), None for none; ValueError naming what is not
    supported."""
    if not quantization_config:
        return None
    method = quantization_config.get("quant_method") if isinstance(quantization_config, dict) else None
    refused = (f"{source}: kvserve cannot read this quantized checkpoint: config.json has quantization_config "
               f"(method {method!r})")
    if method == "fp8":
        if quantization_config.get("weight_block_size"):
            raise ValueError(f"{refused}: block-wise scales (weight_block_size) are not supported; kvserve reads fp8 "
                             f"weights with a scale a tensor or a row")
        return "fp8"
    if method == "compressed-tensors":
        if quantization_config.get("kv_cache_scheme"):
            raise ValueError(f"{refused}: KV-cache scales (kv_cache_scheme) are not supported (kv_cache_dtype='fp8' "
                             f"stores the cache unscaled)")
        groups = (quantization_config.get("config_groups") or {}).items()
        if not any((group.get("weights") or {}).get("type") == "int" for _, group in groups):
            for name, group in groups:
                weights = group.get("weights") or {}
                if (weights.get("num_bits"), weights.get("type"), weights.get("strategy")) not in (
                        (8, "float", "tensor"), (8, "float", "channel")):
                    raise ValueError(f"{refused}: config group {name!r} quantizes weights as {weights}; kvserve "
                                     f"reads 8-bit float weights with a scale a tensor or a row, and 4- and 8-bit "
                                     f"integer ones")
            return "fp8"
    if method in CHECKPOINT_ONLY:  # GPTQ, AWQ, and compressed-tensors' integer weights
        from kvserve.loader.int_scheme import int_scheme

        return int_scheme(quantization_config, refused).method
    raise ValueError(f"{refused}; expected an unquantized checkpoint (quantization='fp8' quantizes one as it loads), "
                     f"fp8 weights (quant_method 'fp8' or 'compressed-tensors'), 4-bit GPTQ, AWQ or compressed-tensors "
                     f"ones, or 8-bit GPTQ or compressed-tensors ones")


def quantize_fp8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, scale): weight [N, K] as float8_e4m3fn codes [N, K] and a float32 scale per row [N], each
    row's largest magnitude mapped to 448 (a row of zeros: scale 1). ValueError for a weight that is
    not finite."""
    if weight.dim() != 2:
        raise ValueError(f"quantize_fp8: expected a weight [out_features, in_features], "
                         f"got shape {tuple(weight.shape)}")
    rows = weight.float()
    if not rows.isfinite().all():
        raise ValueError("quantize_fp8: the weight holds NaN or infinite values")
    largest = rows.abs().amax(dim=1)
    scale = torch.where(largest > 0, largest / E4M3_MAX, torch.ones_like(largest))
    codes = (rows / scale[:, None]).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return codes, scale.contiguous()


def dequantize_fp8(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The weight the codes stand for, codes * scale per row, in float32 rounded once to `dtype`."""
    return (codes.float() * scale[:, None]).to(dtype)
