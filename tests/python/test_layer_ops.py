"""The fused layer ops' argument checks, which run before any device work: on a machine without a
GPU every call ends in the device check, after the shape, dtype and stride checks have had their say."""

from __future__ import annotations

import pytest
import torch

from kvserve import _C, ops

pytestmark = pytest.mark.skipif(not _C.has_cuda, reason="the fused layer ops exist in CUDA builds only")


def test_cpu_tensors_are_refused_with_the_reason():
    x = torch.randn(3, 8)
    with pytest.raises(ValueError, match=r"input: expected a CUDA array .* got one on cpu"):
        ops.rms_norm(torch.empty_like(x), x, torch.ones(8), 1e-5)
    with pytest.raises(ValueError, match=r"query: expected a CUDA array"):
        ops.rotary_embedding(torch.randn(3, 2, 8), torch.randn(3, 1, 8), torch.randn(3, 4), torch.randn(3, 4))


BAD_CALLS = {
    "rms_norm dtype": (lambda: ops.rms_norm(torch.empty(3, 8), torch.ones(3, 8, dtype=torch.float64),
                                            torch.ones(8), 1e-5), r"input: expected dtype float32"),
    "rms_norm weight size": (lambda: ops.rms_norm(torch.empty(3, 8), torch.ones(3, 8), torch.ones(9), 1e-5),
                             r"weight: dimension 0 must be hidden of input = 8"),
    "rms_norm 4-D": (lambda: ops.rms_norm(torch.empty(1, 3, 2, 8), torch.ones(1, 3, 2, 8), torch.ones(8), 1e-5),
                     r"input: expected 3 dimensions \[num_tokens, hidden\] or \[num_tokens, num_heads, hidden\]"),
    "rms_norm strided hidden": (lambda: ops.rms_norm(torch.empty(3, 8), torch.ones(3, 16)[:, ::2], torch.ones(8),
                                                     1e-5), r"input: expected dimensions 1.. contiguous"),
    "fused residual shape": (lambda: ops.fused_add_rms_norm(torch.ones(3, 8), torch.ones(2, 8), torch.ones(8), 1e-5),
                             r"residual: expected the shape of input \[3, 8\], got \[2, 8\]"),
    "rotary cos width": (lambda: ops.rotary_embedding(torch.randn(3, 2, 8), torch.randn(3, 1, 8), torch.randn(3, 3),
                                                      torch.randn(3, 3)), r"cos: dimension 1 must be head_dim / 2"),
    "rotary key tokens": (lambda: ops.rotary_embedding(torch.randn(3, 2, 8), torch.randn(2, 1, 8), torch.randn(3, 4),
                                                       torch.randn(3, 4)), r"key: dimension 0 must be num_tokens"),
    "silu odd width": (lambda: ops.silu_and_mul(torch.empty(3, 4), torch.ones(3, 9)),
                       r"input: expected an even last dimension"),
    "silu out width": (lambda: ops.silu_and_mul(torch.empty(3, 5), torch.ones(3, 8)),
                       r"out: dimension 1 must be half the width of input = 4"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_arguments_raise_value_error(case):
    call, message = BAD_CALLS[case]
    with pytest.raises(ValueError, match=message):
        call()
