"""Runs tests again with the CPU kernels capped to a lesser ISA (KVSERVE_CPU_ISA), as a CPU without
AVX-512 (or without x86) would run them, in a fresh process since the choice is made once."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ISAS = ["portable", "avx2", "avx512"]


def run_tests_under_isa(isa: str, tests: str | list[str], selection: str | None = None) -> None:
    """pytest over `tests` (a file, or node ids), `-k selection` when given, with the kernels capped
    to `isa`; skips where this CPU or build cannot run it."""
    env = dict(os.environ, KVSERVE_CPU_ISA=isa)
    probe = subprocess.run([sys.executable, "-c", "from kvserve import _C; print(_C.ops.cpu_isa())"],
                           env=env, capture_output=True, text=True, check=True)
    if probe.stdout.strip() != isa:
        pytest.skip(f"this CPU or build cannot run {isa} (got {probe.stdout.strip()})")
    tests = [tests] if isinstance(tests, str) else tests
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests,
                             *(["-k", selection] if selection else [])], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
