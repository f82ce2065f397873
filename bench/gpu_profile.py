"""Where a graphed decode step's GPU time goes (`python bench/gpu_bench.py profile`): torch.profiler's
CUDA activity split by part of the step, each kernel counted for its own share of overlapping
activity, and the host's time by function."""

from __future__ import annotations

import cProfile
import json
import pstats
import statistics
import tempfile
import time
from pathlib import Path

import torch

from gpu_common import decode_runs, dummy_8b_engine, record
from kvserve import Engine

# Kernel name fragments -> the part of a decode step they do (the first match wins).
KERNEL_PARTS = [
    ("attention", ("attention_mma_kernel", "attention_portable_kernel")),
    ("rotary (+ cache write)", ("rotary_kernel",)),
    ("cache write", ("reshape_and_cache", "reshape_and_round")),
    ("rms norm", ("rms_norm",)),
    ("silu and mul", ("silu_and_mul",)),
    ("sampler (argmax)", ("argmax",)),
    ("linear (kvserve)", ("linear_kernel",)),
    ("linear (cuBLAS)", ("gemm", "gemv", "nvjet", "cutlass", "xmma", "splitk", "cublas")),
    ("copies", ("memcpy", "memset")),
]


def kernel_part(name: str) -> str:
    lowered = name.lower()
    for part, fragments in KERNEL_PARTS:
        if any(f in lowered for f in fragments):
            return part
    return "other (torch)"


def gpu_activity(prof) -> list[tuple[str, float, float]]:
    """(name, start, duration) in microseconds of every kernel, copy and memset in a finished
    torch.profiler run, read from its Chrome trace (a stable format across torch versions)."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text())["traceEvents"]
    return [(e["name"], float(e["ts"]), float(e["dur"])) for e in events
            if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]


def exclusive_times(activity: list[tuple[str, float, float]]) -> list[tuple[str, float]]:
    """(name, microseconds) of each activity's time that no activity started before it covered. With
    programmatic dependent launch a kernel starts while the one before it still runs, and its
    duration counts that wait; what is left is its own share of the step. The sum is the time the
    GPU was busy (the union of the intervals)."""
    times, covered_until = [], float("-inf")
    for name, start, duration in sorted(activity, key=lambda a: a[1]):
        end = start + duration
        times.append((name, max(0.0, end - max(start, covered_until))))
        covered_until = max(covered_until, end)
    return times


def host_profile(engine: Engine, steps: int) -> list[str]:
    """Where the host's time goes in `steps` engine steps, by function (cProfile, own time, which
    inflates short calls): the Python and C++ calls around the GPU's work, and the wait for it."""
    profiler = cProfile.Profile()
    torch.cuda.synchronize()
    profiler.enable()
    for _ in range(steps):
        engine.step()
    torch.cuda.synchronize()
    profiler.disable()
    functions = sorted(pstats.Stats(profiler).stats.items(), key=lambda kv: -kv[1][2])[:15]
    return ["ms/step  calls/step  host function (cProfile, own time)"] + [
        f"{own * 1e3 / steps:7.3f}  {calls / steps:10.1f}  {Path(file).name}:{line}({function})"
        for (file, line, function), (_, calls, own, _, _) in functions]


def bench_profile(out: Path, report: Path, batches: list[int], context: int, steps: int) -> None:
    """Decode steps under torch.profiler (CUDA activity only): GPU busy time against wall time, split
    by part, and the kernels that take the most time; graphs on and off; then, with graphs, the
    host's time by function (what the GPU waits for between steps)."""
    with tempfile.TemporaryDirectory() as directory:
        engine = dummy_8b_engine(Path(directory), max_num_seqs=max(batches))
    lines = []
    for batch, mode in decode_runs(engine, batches, context, 2 * steps + 1, "profile"):
        engine.step()  # warm-up outside the profile
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            start = time.perf_counter()
            for _ in range(steps):
                engine.step()
            torch.cuda.synchronize()
            wall_ms = (time.perf_counter() - start) * 1e3 / steps
        activity = gpu_activity(prof)
        exclusive = exclusive_times(activity)
        busy_ms = sum(us for _, us in exclusive) / 1e3 / steps
        overlap_ms = sum(duration for _, _, duration in activity) / 1e3 / steps - busy_ms
        parts: dict[str, float] = {}
        kernels: dict[str, list[float]] = {}
        for kernel, us in exclusive:
            part = kernel_part(kernel)
            parts[part] = parts.get(part, 0.0) + us / 1e3 / steps
            kernels.setdefault(kernel, []).append(us)
        name = f"profile_b{batch}_ctx{context}_{mode}"
        record(out, name=name, wall_ms=wall_ms, gpu_busy_ms=busy_ms, overlap_ms=overlap_ms,
               kernels_per_step=len(activity) / steps, parts_ms={k: round(v, 4) for k, v in parts.items()})
        lines += [f"== {name}: {wall_ms:.2f} ms a step (profiled), GPU busy {busy_ms:.2f} ms, "
                  f"{len(activity) / steps:.0f} kernels a step, {overlap_ms:.2f} ms of their durations overlapped "
                  "(times below: each kernel's share not covered by one started before it)", "ms/step  part"]
        lines += [f"{ms:7.3f}  {part}" for part, ms in sorted(parts.items(), key=lambda kv: -kv[1])]
        lines.append("ms/step  calls/step  mean us  kernel")
        top = sorted(kernels.items(), key=lambda kv: -sum(kv[1]))[:20]
        lines += [f"{sum(v) / 1e3 / steps:7.3f}  {len(v) / steps:10.1f}  {statistics.mean(v):7.1f}  {k[:150]}"
                  for k, v in top]
        if mode == "graphs":
            lines += host_profile(engine, steps)
        lines.append("")
    report.write_text("\n".join(lines))
    print("\n".join(lines), flush=True)
