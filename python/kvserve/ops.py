"""Kernels over torch tensors or numpy arrays (zero-copy through DLPack).

Each function validates its arguments in C++ (dtype, device, shape, strides → ValueError) and
passes the current CUDA stream along for CUDA tensors.

CPU torch tensors are handed over as DLPack capsules made by `torch.utils.dlpack.to_dlpack`: the
same zero-copy view, but about ten times cheaper per tensor (0.3 us instead of 2-4 us) than letting
the extension call `tensor.__dlpack__()`, which matters for kernels called once per layer per step.
Other tensors take the extension's own path, which reports their device clearly.
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
    return to_dlpack(array) if isinstance(array, torch.Tensor) and array.is_cpu else array


def copy_blocks(cache, block_pairs) -> None:
    """In `cache` [num_blocks, ...], copy block src to block dst for each row {src, dst} of
    `block_pairs` [num_pairs, 2] (int64, on the host)."""
    _C.ops.copy_blocks(_dl(cache), _dl(block_pairs), _stream_of(cache))


def reshape_and_cache(key, value, key_cache, value_cache, slot_mapping) -> None:
    """Write this step's K/V rows into their cache slots, in place.

    key, value:             [num_tokens, num_kv_heads, head_dim]  (rows and heads may be strided)
    key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_dim]  same dtype as key
    slot_mapping:           [num_tokens] int64 or int32; slot = block_id * block_size + offset;
                            -1 skips the token
    A slot out of range raises ValueError before anything is written.
    """
    _C.ops.reshape_and_cache(_dl(key), _dl(value), _dl(key_cache), _dl(value_cache), _dl(slot_mapping))


def paged_attention(out, query, key_cache, value_cache, block_table, seq_lens, query_start_loc,
                    scale, causal=True, sliding_window=None, softcap=None) -> None:
    """Attention of every query row over its request's paged context, written into `out`.

    query, out:             [num_tokens, num_heads, head_dim]  tokens of all requests, concatenated
                            (rows and heads may be strided, e.g. views of a fused qkv projection)
    key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_dim]  same dtype as query
    block_table:            [num_reqs, max_blocks_per_req] int32
    seq_lens:               [num_reqs] int32, context length including this step's tokens
    query_start_loc:        [num_reqs + 1] int32, request i owns query rows [qsl[i], qsl[i+1])

    Query row j of request i sits at position seq_lens[i] - (qsl[i+1] - qsl[i]) + j and attends to
    the cached positions up to its own (all of them if not `causal`; only the last
    `sliding_window` if set). `softcap` c maps each scaled score s to c * tanh(s / c). GQA: head h
    reads kv head h // (num_heads // num_kv_heads). float32, bfloat16 or float16; float32 math.
    """
    _C.ops.paged_attention(_dl(out), _dl(query), _dl(key_cache), _dl(value_cache), _dl(block_table),
                           _dl(seq_lens), _dl(query_start_loc), scale, causal, sliding_window, softcap)


def rms_norm(out, input, weight, eps: float, residual=None) -> None:
    """RMSNorm of each row of `input` [num_tokens, hidden] into `out` (may be `input` itself).

    With `residual` (same shape), first residual <- input + residual in place, then normalize the
    sum: the residual add of the next block fused in. Rounded as Hugging Face's Llama rounds in the
    model dtype: out = dtype(dtype(x * rsqrt(mean(x^2) + eps)) * weight), float32 math.
    Rows may be strided; the last dimension must be contiguous.
    """
    _C.ops.rms_norm(_dl(out), _dl(input), _dl(weight), eps, None if residual is None else _dl(residual))


def silu_and_mul(out, input) -> None:
    """out [num_tokens, dim] = silu(gate) * up, for input [num_tokens, 2 * dim] holding [gate; up]."""
    _C.ops.silu_and_mul(_dl(out), _dl(input))


def argmax(out, input) -> None:
    """out [num_rows] int32 = the first index of each row's largest value in `input`
    [num_rows, num_cols] (float32, bfloat16 or float16; rows may be strided). NaN entries are
    ignored: greedy sampling straight from logits in the model dtype, without a float32 copy."""
    _C.ops.argmax(_dl(out), _dl(input))


def rotary_embedding(query, key, cos, sin) -> None:
    """Rotate query [T, num_heads, head_dim] and key [T, num_kv_heads, head_dim] in place (rows and
    heads may be strided views of a fused qkv projection) by cos, sin [T, head_dim / 2] (same dtype,
    contiguous): pair (x[i], x[i + D/2]) turns by the angle of frequency i, as Hugging Face's Llama."""
    _C.ops.rotary_embedding(_dl(query), _dl(key), _dl(cos), _dl(sin))


def linear(out, input, weight, bias=None) -> None:
    """out [M, N] = input [M, K] @ weight [N, K]^T (+ bias [N]), float32 accumulation rounded once.

    For few rows (decode): each weight row is read once and used for every input row, so the call
    runs at the weights' memory bandwidth where a general GEMM would pack and dispatch.
    """
    _C.ops.linear(_dl(out), _dl(input), _dl(weight), None if bias is None else _dl(bias))
