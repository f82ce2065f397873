"""Device selection: names, what "auto" picks, and clear errors for a device that cannot be used."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from kvserve import _C, Engine
from kvserve.device import resolve_device

GPU = _C.has_cuda and torch.cuda.is_available()


def test_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if GPU else "cpu")


@pytest.mark.parametrize("name", ["tpu", "gpu", "meta", 3])
def test_unknown_devices_are_refused(name):
    with pytest.raises(ValueError, match=r"device: expected one of auto, cpu, cuda, cuda:N"):
        resolve_device(name)


@pytest.mark.skipif(GPU, reason="the error of a machine without a usable GPU")
def test_cuda_without_a_usable_gpu_says_why():
    reason = "torch sees no CUDA GPU" if _C.has_cuda else "this kvserve build has no CUDA kernels"
    with pytest.raises(ValueError, match=rf"device='cuda': {reason}"):
        resolve_device("cuda")


@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
def test_cuda_index_out_of_range():
    with pytest.raises(ValueError, match=r"there are \d+ CUDA devices"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.parametrize("utilization", [0.0, 1.5, -0.1])
def test_engine_refuses_a_bad_gpu_memory_utilization(tiny_model_dir, utilization):
    with pytest.raises(ValueError, match=rf"gpu_memory_utilization must be in \(0, 1\], got {utilization}"):
        Engine(str(tiny_model_dir("LlamaForCausalLM")), device="cpu", gpu_memory_utilization=utilization)


def test_a_cpu_engine_imports_nothing_gpu_or_gguf(tiny_model_dir):
    """The GPU modules load only for a GPU engine, and gguf only for a GGUF file (the GPU test machine
    has no gguf)."""
    code = ("import sys; from kvserve import Engine; Engine(sys.argv[1], device='cpu', kv_cache_memory_gb=0.01); "
            "print(sorted(m for m in sys.modules if m == 'gguf' or m.startswith('kvserve.gpu')))")
    result = subprocess.run([sys.executable, "-c", code, str(tiny_model_dir("LlamaForCausalLM"))], capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == "[]"
