"""What the machine a benchmark runs on is, and what it can do: its CPU, its threads, the peak
memory of this process, and the GEMM rate that compute efficiencies are measured against.

The GEMM rate is torch's own: the best of several `torch.mm` of two random square matrices of the
benchmark's dtype, 2048 on a side (large enough that torch reaches its peak on this class of
machine: 1024 gave ~60% of it in bf16, 4096 no more than 2048), on the engine's device with
torch's current thread count.
"""

from __future__ import annotations

import platform
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch

GEMM_SIZE = 2048
GEMM_MIN_REPEATS = 3
GEMM_MIN_SECONDS = 0.3


def call_seconds(fn, repeat: int, warmup: int = 1) -> list[float]:
    """Wall seconds of each of `repeat` calls of `fn`, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux reports it in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_gpu_memory_bytes(device: torch.device) -> int | None:
    """Peak memory torch allocated on a CUDA device; None for the CPU."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


@dataclass(frozen=True)
class GemmRate:
    flops_per_s: float
    dtype: str
    size: int  # M = N = K
    repeats: int
    threads: int
    device: str


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_gemm_rate(dtype: torch.dtype, device: torch.device | str = "cpu", size: int = GEMM_SIZE) -> GemmRate:
    """The best rate of at least GEMM_MIN_REPEATS timed products (and GEMM_MIN_SECONDS of them),
    after one untimed warm-up."""
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(device=device, dtype=dtype) for _ in range(2))
    torch.mm(a, b)
    _synchronize(device)
    best, repeats, spent = float("inf"), 0, 0.0
    while repeats < GEMM_MIN_REPEATS or spent < GEMM_MIN_SECONDS:
        start = time.perf_counter()
        torch.mm(a, b)
        _synchronize(device)
        elapsed = time.perf_counter() - start
        best, repeats, spent = min(best, elapsed), repeats + 1, spent + elapsed
    return GemmRate(2 * size**3 / best, str(dtype).removeprefix("torch."), size, repeats, torch.get_num_threads(),
                    str(device))
