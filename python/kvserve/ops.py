"""Kernels over torch tensors or numpy arrays (zero-copy through DLPack).

Each function validates its arguments in C++ (dtype, device, shape, strides → ValueError) and
passes the current CUDA stream along for CUDA tensors. The paged KV-cache kernels and the fused
layer helpers (rms_norm, fused_add_rms_norm, rotary_embedding, rotary_and_cache, silu_and_mul),
argmax and the few-rows linear run on the CPU or on CUDA (in builds with CUDA kernels, `_C.has_cuda`),
wherever their arrays are; linear_rotary_and_cache (and linear's silu_and_mul_output) on CUDA only.

On sm_90 GPUs a CUDA kernel may start while the kvserve kernel before it in the stream still runs,
and read the weights (of the norms and the few-rows products) and paged_attention's metadata
(seq_lens, query_start_loc, block_table) meanwhile: those must not be written by the kernel just
before it, whoever launched that one (a copy from the host, or any kernel before that, is fine).
`KVSERVE_PDL=0` turns the overlap off.

CPU and CUDA torch tensors are handed over as DLPack capsules made by `torch.utils.dlpack.to_dlpack`:
the same zero-copy view, but about ten times cheaper per tensor (0.3 us instead of 2-4 us) than
letting the extension call `tensor.__dlpack__()`, which matters for kernels called once per layer
per step; and it synchronizes no stream, so a call can be captured in a CUDA graph. Other tensors
take the extension's own path, which reports their device clearly.
"""

from __future__ import annotations

import torch
from torch.utils.dlpack import to_dlpack

from kvserve import _C


def _stream_of(array) -> int:
    """The current CUDA stream's handle for a CUDA tensor, 0 (default stream / host) otherwise."""
    device = getattr(array, "device", None)
    if device is not None and getattr(device, "type", None) == "cuda":
        return torch.cuda.current_stream(device).cuda_stream
    return 0


def _dl(array):
    """A DLPack capsule of a CPU or CUDA tensor (see above); anything else, None included, as it is."""
    return to_dlpack(array) if isinstance(array, torch.Tensor) and (array.is_cpu or array.is_cuda) else array


def copy_blocks(cache, block_pairs) -> None:
    """In `cache` [num_blocks, ...], copy block src to block dst for each row {src, dst} of
    `block_pairs` [num_pairs, 2] (int64, on the host)."""
    _C.ops.copy_blocks(_dl(cache), _dl(block_pairs), _stream_of(cache))


def reshape_and_cache(key, value, key_cache, value_cache, slot_mapping) -> None:
    """Write this step's K/V rows into their cache slots, in place.

    key, value:             [num_tokens, num_kv_heads, head_dim]  (rows and heads may be strided)
    key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_dim]  the dtype of key, or
                            torch.float8_e4m3fn / torch.float8_e5m2, or for float32 keys
                            bfloat16 / float16: each element rounded to nearest even, into fp8
                            saturated to the format's largest magnitude
    slot_mapping:           [num_tokens] int64 or int32; slot = block_id * block_size + offset;
                            -1 skips the token
    On the CPU a slot out of range raises ValueError before anything is written; on CUDA (where the
    slots stay in device memory) such a token is skipped.
    """
    _C.ops.reshape_and_cache(_dl(key), _dl(value), _dl(key_cache), _dl(value_cache), _dl(slot_mapping),
                             _stream_of(key))


def paged_attention(out, query, key_cache, value_cache, block_table, seq_lens, query_start_loc,
                    scale, causal=True, sliding_window=None, softcap=None, num_splits=None) -> None:
    """Attention of every query row over its request's paged context, written into `out`.

    query, out:             [num_tokens, num_heads, head_dim]  tokens of all requests, concatenated
                            (rows and heads may be strided, e.g. views of a fused qkv projection)
    key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_dim]  the dtype of query, or
                            a narrower one as reshape_and_cache takes (read as the values its
                            elements stand for)
    block_table:            [num_reqs, max_blocks_per_req] int32
    seq_lens:               [num_reqs] int32, context length including this step's tokens
    query_start_loc:        [num_reqs + 1] int32, request i owns query rows [qsl[i], qsl[i+1])

    Query row j of request i sits at position seq_lens[i] - (qsl[i+1] - qsl[i]) + j and attends to
    the cached positions up to its own (all of them if not `causal`; only the last
    `sliding_window` if set). `softcap` c maps each scaled score s to c * tanh(s / c). GQA: head h
    reads kv head h // (num_heads // num_kv_heads). float32, bfloat16 or float16; float32 math.

    `num_splits` (CUDA; the CPU ignores it): split each tile's keys across at most that many thread
    blocks instead of as many as fill the GPU; a speed setting for tuning and benchmarks, the values
    agree to within float32 rounding. `KVSERVE_DECODE_WARPS` ("2", "auto"; read at each call) picks
    a two-warp tile for decode steps at head_dim 128 (README.md), another such setting.

    On the CPU, bad metadata raises ValueError before anything is written. On CUDA the metadata
    stays in device memory and is checked by the kernel as it reads it: the rows of a request with
    a seq_len or block id out of range come out NaN (see paged_attention.h).
    """
    _C.ops.paged_attention(_dl(out), _dl(query), _dl(key_cache), _dl(value_cache), _dl(block_table),
                           _dl(seq_lens), _dl(query_start_loc), scale, causal, sliding_window, softcap,
                           num_splits, _stream_of(query))


def rms_norm(out, x, weight, eps: float) -> None:
    """out = weight * round(x / sqrt(mean(x^2) + eps)) over the last dimension.

    x, out: [num_tokens, hidden] or [num_tokens, num_heads, hidden] (tokens and heads may be strided)
    weight: [hidden]; every array of one dtype. Rounds to the dtype where Hugging Face's RMSNorm does.
    """
    _C.ops.rms_norm(_dl(out), _dl(x), _dl(weight), eps, _stream_of(x))


def fused_add_rms_norm(x, residual, weight, eps: float) -> None:
    """In place: residual = round(x + residual), then x = rms_norm(residual) — a block's output added
    to the running sum and normalized for the next block, in one pass.

    x, residual: [num_tokens, hidden] (rows may be strided); weight: [hidden].
    """
    _C.ops.fused_add_rms_norm(_dl(x), _dl(residual), _dl(weight), eps, _stream_of(x))


def rotary_embedding(query, key, cos, sin) -> None:
    """Rotate query [T, num_heads, head_dim] and key [T, num_kv_heads, head_dim] in place: each pair
    (x[i], x[i + head_dim/2]) by the angle of cos[t, i], sin[t, i] ([T, head_dim / 2]), rounding as
    Hugging Face's `q * cos + rotate_half(q) * sin`. query and key may be strided views of a fused
    qkv projection."""
    _C.ops.rotary_embedding(_dl(query), _dl(key), _dl(cos), _dl(sin), _stream_of(query))


def rotary_and_cache(query, key, value, cos, sin, key_cache, value_cache, slot_mapping, query_norm_weight=None,
                     key_norm_weight=None, norm_eps: float = 1e-6) -> None:
    """rotary_embedding(query, key, cos, sin), then reshape_and_cache(key, value, key_cache,
    value_cache, slot_mapping), in one call (one kernel on CUDA): a layer's step before attention.
    With query_norm_weight and key_norm_weight [head_dim] (Qwen3), rms_norm(query, query,
    query_norm_weight, norm_eps) and the same for key first, bit for bit (on CUDA in the same
    kernel where the heads move in 16-byte packs, 2 to 32 of them a head)."""
    _C.ops.rotary_and_cache(_dl(query), _dl(key), _dl(value), _dl(cos), _dl(sin), _dl(key_cache), _dl(value_cache),
                            _dl(slot_mapping), _stream_of(query), _dl(query_norm_weight), _dl(key_norm_weight),
                            norm_eps)


def dequantize_weight(out, weight, weight_scale, weight_offset=None) -> None:
    """out [N, K] (float32, bfloat16 or float16) = the weight that linear's product over quantized
    codes stands for, computed in float32, for a GEMM library to multiply many rows by (CPU or CUDA): the
    float8_e4m3fn weight [N, K] times its rows' weight_scale [N], uint4 codes (uint8 [N, K / 2],
    kvserve.uint4) times their groups' weight_scale plus weight_offset [N, K / 32], or int8 codes
    (kvserve.int8) times their groups' weight_scale [N, K / 16]."""
    _C.ops.dequantize_weight(_dl(out), _dl(weight), _dl(weight_scale), _dl(weight_offset), _stream_of(out))


def linear_rotary_and_cache(out, input, weight, bias, query, key, value, cos, sin, key_cache, value_cache,
                            slot_mapping, weight_scale=None, weight_offset=None) -> None:
    """linear(out, input, weight, bias, weight_scale=..., weight_offset=...), then rotary_and_cache(query,
    key, value, cos, sin, key_cache, value_cache, slot_mapping) over out's q, k and v columns (query,
    key, value: the views of them), in one CUDA kernel, bit for bit: a layer's qkv projection at
    decode (linear's few rows; head_dim a multiple of 16; ValueError otherwise, and on the CPU)."""
    _C.ops.linear_rotary_and_cache(_dl(out), _dl(input), _dl(weight), _dl(bias), _dl(query), _dl(key), _dl(value),
                                   _dl(cos), _dl(sin), _dl(key_cache), _dl(value_cache), _dl(slot_mapping),
                                   _stream_of(input), _dl(weight_scale), _dl(weight_offset))


def silu_and_mul(out, x) -> None:
    """out [T, size] = silu(x[:, :size]) * x[:, size:] for x [T, 2 * size]."""
    _C.ops.silu_and_mul(_dl(out), _dl(x), _stream_of(x))


def argmax(out, input) -> None:
    """out [num_rows] int32 = the first index of each row's largest value in `input`
    [num_rows, num_cols] (float32, bfloat16 or float16; rows may be strided). NaN entries are
    ignored: greedy sampling straight from logits in the model dtype, without a float32 copy."""
    _C.ops.argmax(_dl(out), _dl(input), _stream_of(input))


def linear(out, input, weight, bias=None, silu_and_mul_output: bool = False, weight_scale=None,
           weight_offset=None) -> None:
    """out [M, N] = input [M, K] @ weight [N, K]^T (+ bias [N]), float32 accumulation rounded once.

    For few rows (decode): each weight row is read once and used for every input row, so the call
    runs at the weights' memory bandwidth where a general GEMM would pack and dispatch. On CUDA: up
    to `_C.ops.linear_cuda_max_rows` rows of float16/bfloat16 on tensor cores (sm_80+), in_features
    and row starts in 16-byte packs (ValueError otherwise). With `silu_and_mul_output` (CUDA only),
    the weight's rows are an MLP's [gate; up] and out [M, N / 2] receives what silu_and_mul would
    make of the product, bit for bit, without the [M, N] product in memory. out must not overlap
    input. The weight may be float8_e4m3fn codes with `weight_scale` [N] (float32):
    out = (input @ codes^T) * weight_scale (+ bias) (kvserve.quantization), uint4 codes (uint8
    [N, K / 2], kvserve.uint4) with `weight_scale` and `weight_offset` [N, K / 32] (float32), each
    group of 32 codes standing for code * scale + offset, or int8 codes (int8 [N, K], kvserve.int8)
    with `weight_scale` [N, K / 16], each group of 16 standing for code * scale. On the CPU in float32
    rounded once; on CUDA each code's value is rounded to the dtype first (as dequantize_weight rounds
    it), e4m3's exactly.
    """
    _C.ops.linear(_dl(out), _dl(input), _dl(weight), _dl(bias), _stream_of(input), silu_and_mul_output,
                  _dl(weight_scale), _dl(weight_offset))
