"""Kernels over torch tensors or numpy arrays (zero-copy through DLPack).

Each function validates its arguments in C++ (dtype, device, shape, contiguity → ValueError) and
passes the current CUDA stream along for CUDA tensors.
"""

from __future__ import annotations

from kvserve import _C


def _stream_of(array) -> int:
    """The current CUDA stream's handle for a CUDA tensor, 0 (default stream / host) otherwise."""
    device = getattr(array, "device", None)
    if device is not None and getattr(device, "type", None) == "cuda":
        import torch

        return torch.cuda.current_stream(device).cuda_stream
    return 0


def copy_blocks(cache, block_pairs) -> None:
    """In `cache` [num_blocks, ...], copy block src to block dst for each row {src, dst} of
    `block_pairs` [num_pairs, 2] (int64, on the host)."""
    _C.ops.copy_blocks(cache, block_pairs, _stream_of(cache))
