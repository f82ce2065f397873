"""Which device an engine runs on: "auto" (a CUDA GPU when one is visible and this build has the
CUDA kernels, else the CPU), "cpu", "cuda" or "cuda:N"."""

from __future__ import annotations

import torch

from kvserve import _C

DEVICES = ("auto", "cpu", "cuda", "cuda:N")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch.device for `device`; ValueError when it names no usable device."""
    if not isinstance(device, (str, torch.device)):  # torch reads a bare int as a CUDA index
        raise _unknown(device)
    if device == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if _cuda_usable() else torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise _unknown(device) from None
    if resolved.type == "cpu":
        return resolved
    if resolved.type != "cuda":
        raise _unknown(device)
    if not _C.has_cuda:
        raise ValueError(f"device={device!r}: this kvserve build has no CUDA kernels (it was built without nvcc)")
    if not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: torch sees no CUDA GPU (torch.cuda.is_available() is False)")
    index = torch.cuda.current_device() if resolved.index is None else resolved.index
    if index >= torch.cuda.device_count():
        raise ValueError(f"device={device!r}: there are {torch.cuda.device_count()} CUDA devices")
    return torch.device("cuda", index)


def _unknown(device) -> ValueError:
    return ValueError(f"device: expected one of {', '.join(DEVICES)}, got {device!r}")


def _cuda_usable() -> bool:
    return _C.has_cuda and torch.cuda.is_available()
