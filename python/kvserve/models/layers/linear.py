"""A linear layer whose output may be several checkpoint projections stacked (fused).

    weight: [sum(output_sizes), input_size]      e.g. qkv_proj = [q_proj; k_proj; v_proj]

One matmul then serves all of them; the parts are views of its output. Parameters are created
uninitialized: the loader (or load_format="dummy") fills them.

On the CPU each product takes the fastest of three paths (bench/README.md, "Linear"):
    up to 4 rows (decode of a few sequences)     kvserve.ops.linear: each weight row streamed once,
                                                 without a GEMM's packing and dispatch; bfloat16 on
                                                 AVX512-BF16 CPUs reads a copy interleaved in blocks
                                                 of 4 rows (one stream per thread, +5-20% bandwidth)
    more rows, bfloat16 or float32               oneDNN on a copy of the weight in its own blocked
                                                 layout, made once at load (finalize_weights), where
                                                 oneDNN takes the dtype (bfloat16: AVX-512 CPUs)
    more rows, other dtypes and CPUs             kvserve.ops.linear (torch's float16 GEMM, and its
                                                 bfloat16 one on AVX2, run 4-5x slower)
The blocked copy doubles the memory of the projections' weights (the interleaved one adds a third
copy); it is what makes oneDNN fast at decode batch sizes (1.2-1.8x over torch's F.linear, which
reorders the weight on every call).

With quantization="fp8" (kvserve.quantization) the decoder layers' weights are e4m3 codes with a
float32 scale per row (quantized_linear): kvserve.ops.linear reads the codes directly at few rows (half a
16-bit weight's bytes), and widens them into the dtype first for more (on AVX512-BF16 CPUs, 12
weight rows at a time against input rows in the vector lanes); from 256 rows (or fewer, longer ones)
of a dtype oneDNN takes on this CPU, the whole weight is widened once a call and multiplied by
oneDNN's GEMM (float32: on its blocked copy, made for the call), which runs such products faster.
A GGUF file's 4-bit blocks and GPTQ and AWQ weights load as uint4 codes (kvserve.uint4), its symmetric
8- to 3-bit blocks as int8 codes (kvserve.int8); both take the same paths (in bfloat16 widened for
oneDNN from GROUPED_DENSE_ROWS rows; in float32 never).

On CUDA, up to 8 rows of float16/bfloat16 (a decode step of a few sequences) take kvserve.ops.linear
on tensor cores, which streams each weight once at close to the memory bandwidth (an MLP's gate_up
projection writing SiLU-and-mul's output itself); more rows, or inputs it cannot take, take cuBLAS
(F.linear). Quantized codes (GPTQ, AWQ, GGUF blocks, fp8) stay codes on the GPU too: up to
CUDA_CODES_MAX_ROWS rows kvserve.ops.linear widens them in registers (each value rounded to the
dtype; the few-rows kernel once for up to 32 rows, the tiled one once for 64), and more rows multiply
a copy widened for the call (kvserve.ops.dequantize_weight, the same values) with cuBLAS.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from kvserve import _C, ops
from kvserve.models.layers.activation import silu_and_mul
from kvserve.models.layers.weight_codes import WeightCodes
from kvserve.quantization import quantize_fp8

if TYPE_CHECKING:
    from kvserve.lora.batch import LoRABatch

# Rows up to which kvserve.ops.linear beats oneDNN with a blocked weight on the CPU.
OPS_MAX_ROWS = 4
# A bfloat16 product over e4m3 codes widens the whole weight for oneDNN's GEMM from this many rows,
# or from this many bytes of input rows (which kvserve's kernel reads again for every 12 weight rows:
# past its L2 share they come from further away): bench/README.md, "Weight-only fp8".
E4M3_DENSE_ROWS = 256
DENSE_INPUT_BYTES = 512 << 10
# The same for a bfloat16 product over uint4 or int8 codes, from this many rows (or DENSE_INPUT_BYTES;
# bench/README.md, "uint4 weights"); in float32 kvserve's panels ran faster at every row count,
# oneDNN's packing of the weight costing more than it saved.
GROUPED_DENSE_ROWS = 128
# Rows up to which a CUDA product over codes takes kvserve's kernels (the few-rows kernel up to 32
# rows, the tiled one past them, both widening the codes in registers) rather than widening the
# weight for cuBLAS (reading the codes, writing and reading a 16-bit copy: 2.4x a 16-bit weight's
# bytes for uint4, before the GEMM). Past some hundreds of rows cuBLAS's faster tensor-core
# instructions (wgmma on sm_90) outrun the widening's cost; 256 comes from a model of an H100's
# rates, not yet measured (bench/gpu_check.sh times both ways from 1 to 1024 rows).
CUDA_CODES_MAX_ROWS = 256
# The batch size oneDNN lays the blocked weight out for (any batch size may use it).
PACK_BATCH_HINT = 64


@functools.cache
def onednn_packs(dtype: torch.dtype) -> bool:
    """Whether oneDNN keeps blocked weights of `dtype` on this CPU: float32 wherever torch has oneDNN,
    bfloat16 only with AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT (an AVX2-only CPU refuses it), which
    is what the packing itself says when tried once."""
    if dtype not in (torch.bfloat16, torch.float32) or not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.ones(32, 32, dtype=dtype), PACK_BATCH_HINT)
    except RuntimeError:
        return False
    return True


def pack_for_onednn(weight: torch.Tensor) -> torch.Tensor | None:
    """oneDNN's blocked copy of a CPU bfloat16/float32 weight [N, K]; None where it has no fast path."""
    if weight.is_cpu and onednn_packs(weight.dtype):
        return torch.ops.mkldnn._reorder_linear_weight(weight, PACK_BATCH_HINT)
    return None


def interleave_for_ops(weight: torch.Tensor) -> torch.Tensor | None:
    """The copy of weight [N, K] that kvserve.ops.linear reads fastest at few rows, [N / 4, K / 32, 4, 32]
    (each block of 4 rows as one stream); None where this CPU, dtype or shape has no such path."""
    if not weight.is_cpu or weight.dim() != 2 or not _C.ops.linear_interleave_supported(weight):
        return None
    n, k = weight.shape
    return weight.view(n // 4, 4, k // 32, 32).permute(0, 2, 1, 3).contiguous()


def fast_copies(weight: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(packed, interleaved): the copies of `weight` that linear() takes where they have a fast path."""
    return pack_for_onednn(weight), interleave_for_ops(weight)


@functools.cache
def has_tensor_core_linear(device: torch.device) -> bool:
    """Whether kvserve.ops.linear runs on this CUDA device: a build with CUDA kernels, sm_80 or later."""
    return _C.has_cuda and torch.cuda.get_device_capability(device) >= (8, 0)


def cuda_ops_linear_takes(x: torch.Tensor, weight: torch.Tensor, max_rows: int | None = None,
                          silu_and_mul_output: bool = False, few_rows_only: bool = False) -> bool:
    """Whether kvserve.ops.linear takes x over weight on this CUDA device, and at most `max_rows` rows:
    the layout kvserve/linear.h's linear_cuda_takes asks for (up to 8 rows over a 16-bit weight, any
    number over codes, 16-byte aligned rows), and an sm_80 or later device; with `few_rows_only`, the
    rows its few-rows kernel takes (8, or 32 over codes: ops.linear_rotary_and_cache's)."""
    return ((max_rows is None or x.shape[0] <= max_rows)
            and _C.ops.linear_cuda_takes(ops._dl(x), ops._dl(weight), silu_and_mul_output, few_rows_only)
            and has_tensor_core_linear(x.device))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           packed: torch.Tensor | None = None, interleaved: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] @ weight [N, K]^T (+ bias), by the fastest path for the device, dtype and M;
    `packed` is pack_for_onednn(weight) and `interleaved` interleave_for_ops(weight), where the caller
    keeps them."""
    if x.dim() != 2:
        return F.linear(x, weight, bias)
    if not x.is_cpu:
        if x.is_cuda and cuda_ops_linear_takes(x, weight):
            out = torch.empty(x.shape[0], weight.shape[0], dtype=x.dtype, device=x.device)
            ops.linear(out, x, weight, bias)
            return out
        return F.linear(x, weight, bias)
    if x.shape[0] > OPS_MAX_ROWS and packed is not None:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    out = torch.empty(x.shape[0], weight.shape[0], dtype=x.dtype)
    ops.linear(out, x, weight if interleaved is None else interleaved, bias)
    return out


def quantized_linear(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None = None,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] @ (the weight the codes stand for)^T (+ bias): e4m3 codes [N, K] with their rows'
    scales [N], uint4 codes [N, K / 2] (kvserve.uint4) with their groups' scales and offsets
    [N, K / 32], or int8 codes [N, K] (kvserve.int8) with their groups' scales [N, K / 16] (module
    docstring)."""
    rows = x.reshape(-1, x.shape[-1])
    out_features = codes.shape[0]
    if x.is_cuda:
        if cuda_ops_linear_takes(rows, codes, CUDA_CODES_MAX_ROWS):
            out = torch.empty(rows.shape[0], out_features, dtype=x.dtype, device=x.device)
            ops.linear(out, rows, codes, bias, weight_scale=scale, weight_offset=offset)
        else:
            weight = torch.empty(out_features, x.shape[-1], dtype=x.dtype, device=x.device)
            ops.dequantize_weight(weight, codes, scale, offset)
            out = F.linear(rows, weight, bias)
        return out.view(*x.shape[:-1], out_features)
    long_rows = rows.numel() * rows.element_size() > DENSE_INPUT_BYTES
    if codes.dtype == torch.float8_e4m3fn:
        dense = rows.shape[0] >= E4M3_DENSE_ROWS or long_rows
    else:
        dense = x.dtype == torch.bfloat16 and (rows.shape[0] >= GROUPED_DENSE_ROWS or long_rows)
    if dense and onednn_packs(x.dtype):
        weight = torch.empty(out_features, x.shape[-1], dtype=x.dtype)
        ops.dequantize_weight(weight, codes, scale, offset)
        if x.dtype == torch.bfloat16:
            return F.linear(x, weight, bias)
        # float32: torch's GEMM on a plain weight is MKL's, at half oneDNN's rate on its blocked one.
        out = torch.ops.mkldnn._linear_pointwise(rows, pack_for_onednn(weight), bias, "none", [], "")
        return out.view(*x.shape[:-1], out_features)
    out = torch.empty(rows.shape[0], out_features, dtype=x.dtype)
    ops.linear(out, rows, codes, bias, weight_scale=scale, weight_offset=offset)
    return out.view(*x.shape[:-1], out_features)


class Linear(WeightCodes, nn.Module):
    def __init__(self, input_size: int, output_sizes: int | tuple[int, ...], bias: bool, dtype: torch.dtype):
        super().__init__()
        self.output_sizes = (output_sizes,) if isinstance(output_sizes, int) else tuple(output_sizes)
        self.input_size = input_size  # in_features (a uint4 weight's bytes hold half as many columns)
        total = sum(self.output_sizes)
        self.dtype = dtype  # of the inputs and outputs (the weight's too, unless quantized)
        self.weight = nn.Parameter(torch.empty(total, input_size, dtype=dtype), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(total, dtype=dtype), requires_grad=False) if bias else None
        self.packed: torch.Tensor | None = None
        self.interleaved: torch.Tensor | None = None
        # A quantized weight's scales (float32): with quantize_fp8() or prepare_fp8(), of each row of e4m3
        # codes [out_features]; with prepare_uint4(), of each group of uint4 codes [out_features,
        # input_size / 32], whose offsets weight_offset holds; with prepare_int8(), of each group of
        # int8 codes [out_features, input_size / 16].
        self.weight_scale: nn.Parameter | None = None
        self.weight_offset: nn.Parameter | None = None
        # With prepare_parts(): the stacked projections' weights in parts of different kinds of codes
        # (a GGUF file's Q4_K q and k beside a Q6_K v; a part of neither kind holds the dtype's
        # weight), each a Linear of its rows without a bias (this Linear's bias serves them all); the
        # weight (and its scales) is then None.
        self.parts: nn.ModuleList | None = None
        # With prepare_input_order() (act-order GPTQ), int64 [input_size]: the weight's column k
        # multiplies input column input_order[k] (its groups run over columns in that order). One for all
        # the stacked projections, which share their input.
        self.input_order: nn.Parameter | None = None

    def prepare_parts(self, kinds: list[str | None]) -> None:
        """Uninitialized codes of each stacked projection's kind ("uint4" or "int8": WeightCodes'
        prepare_ methods; None: a weight of the dtype) in parts, in place of the weight, for a
        checkpoint's blocks to load into."""
        device = self.weight.device
        self.parts = nn.ModuleList()
        for size, kind in zip(self.output_sizes, kinds, strict=True):
            part = Linear(self.input_size, size, False, self.dtype).to(device)
            if kind is not None:
                getattr(part, f"prepare_{kind}")()
            self.parts.append(part)
        self.weight = None

    def prepare_input_order(self) -> None:
        """An uninitialized input_order, for a checkpoint's act order to load into (each stacked part
        brings its own, which must agree)."""
        self.input_order = nn.Parameter(torch.empty(self.input_size, dtype=torch.int64, device=self.device),
                                        requires_grad=False)

    @property
    def device(self) -> torch.device:
        return (self.weight if self.parts is None else self.parts[0].weight).device

    def product_input(self, x: torch.Tensor) -> torch.Tensor:
        """x as the weight's columns take it: its columns in input_order, if there is one."""
        return x if self.input_order is None else x.index_select(-1, self.input_order)

    def quantize_fp8(self) -> None:
        """The weight as e4m3 codes with a float32 scale per row (kvserve.quantization), in place of
        itself; once quantized (either way), nothing changes."""
        if self.weight_scale is None:
            self.prepare_codes(*quantize_fp8(self.weight), None)

    def prepare_fp8(self) -> None:
        """Uninitialized e4m3 codes and row scales in place of the weight, for a checkpoint's codes and
        scales to load into as they are."""
        rows = sum(self.output_sizes)
        self.prepare_codes(torch.empty(rows, self.input_size, dtype=torch.float8_e4m3fn), torch.empty(rows), None)

    def plain_shape(self) -> tuple[int, int]:
        return sum(self.output_sizes), self.input_size

    def finalize_weights(self) -> None:
        """Once the weights are in place: keep oneDNN's blocked copy and the few-row kernel's
        interleaved one (on the CPU, where they have a fast path; a quantized weight has none), and
        drop an input order that leaves the columns where they are."""
        plain = self.weight_scale is None and self.parts is None
        self.packed, self.interleaved = fast_copies(self.weight) if plain else (None, None)
        if self.input_order is not None and torch.equal(self.input_order.cpu(), torch.arange(self.input_size)):
            self.input_order = None

    @property
    def few_rows_weight(self) -> torch.Tensor:
        """The weight as kvserve.ops.linear reads it at few rows: interleaved where it can be."""
        return self.weight if self.interleaved is None else self.interleaved

    def forward(self, x: torch.Tensor, lora: LoRABatch | None = None) -> torch.Tensor:
        """x @ weight^T (+ bias), and the step's LoRA adapters' deltas where `lora` has any."""
        if self.parts is not None:
            rows = self.product_input(x)
            out = torch.cat([part.product(rows, None if self.bias is None else self.shard(self.bias, i))
                             for i, part in enumerate(self.parts)], dim=-1)
        else:
            out = self.product(self.product_input(x), self.bias)
        if lora is not None:
            lora.add(self, x, out)
        return out

    def product(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x (as product_input gives it) @ this Linear's one weight^T (+ bias, added before the one
        rounding), by the path its codes or dtype take."""
        if self.weight_scale is not None:
            return quantized_linear(x, self.weight, self.weight_scale, self.weight_offset, bias)
        return linear(x, self.weight, bias, self.packed, self.interleaved)

    def forward_silu_and_mul(self, x: torch.Tensor, lora: LoRABatch | None = None) -> torch.Tensor:
        """silu_and_mul(self(x)) for a [gate; up] projection: on CUDA, where kvserve's kernels take x
        (few rows, or more over codes), one kernel that writes silu(gate) * up (the same bits, without
        the [gate | up] rows)."""
        if lora is not None:
            return silu_and_mul(self(x, lora))
        if (x.is_cuda and x.dim() == 2 and self.parts is None
                and cuda_ops_linear_takes(x, self.weight, CUDA_CODES_MAX_ROWS, silu_and_mul_output=True)):
            out = torch.empty(x.shape[0], self.weight.shape[0] // 2, dtype=x.dtype, device=x.device)
            ops.linear(out, self.product_input(x), self.weight, self.bias, silu_and_mul_output=True,
                       weight_scale=self.weight_scale, weight_offset=self.weight_offset)
            return out
        return silu_and_mul(self(x))

    def shard(self, param: torch.Tensor, index: int) -> torch.Tensor:
        """The rows of `param` (weight or bias) that hold stacked projection number `index`; all of
        input_order, which the parts share."""
        if param is self.input_order:
            return param
        start = sum(self.output_sizes[:index])
        return param[start:start + self.output_sizes[index]]
