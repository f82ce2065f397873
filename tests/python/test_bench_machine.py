"""kvserve.bench.machine: the timing helper every bench script uses, and the GEMM rate."""

import time

import torch

from kvserve.bench.machine import call_seconds, measure_gemm_rate


def test_call_seconds_times_each_call_after_the_warmup():
    calls = []
    times = call_seconds(lambda: (calls.append(1), time.sleep(0.002)), repeat=3, warmup=2)
    assert len(calls) == 5 and len(times) == 3
    assert all(0.002 <= t < 1.0 for t in times)


def test_gemm_rate_is_positive_and_names_its_setting():
    rate = measure_gemm_rate(torch.float32, size=128)
    assert rate.flops_per_s > 0 and rate.size == 128 and rate.repeats >= 3
    assert rate.dtype == "float32" and rate.threads == torch.get_num_threads() and rate.device == "cpu"
