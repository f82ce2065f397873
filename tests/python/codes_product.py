"""The check kvserve.ops.linear's products over either kind of grouped codes take against float64
(test_uint4.py, test_int8.py)."""

from __future__ import annotations

import torch

from kvserve import ops


def assert_product_matches_float64(x: torch.Tensor, weight: torch.Tensor, codes: torch.Tensor, **scales) -> None:
    """ops.linear(out, x, codes, bias, **scales), without a bias and with one, against float64 over
    `weight`, what the codes stand for."""
    rows, out_features = x.shape[0], weight.shape[0]
    for bias in (None, torch.randn(out_features, generator=torch.Generator().manual_seed(rows)).to(x.dtype)):
        out = torch.full((rows, out_features), float("nan"), dtype=x.dtype)
        ops.linear(out, x, codes, bias, **scales)
        expected = x.double() @ weight.t() + (0 if bias is None else bias.double())
        magnitude = x.double().abs() @ weight.abs().t() + (0 if bias is None else bias.double().abs())
        if x.dtype == torch.float32:
            # Each weight within a float32 rounding of its value, then a few sqrt(K) roundings of sum |x w|.
            bound = 2.0 ** -23 * (1 + x.shape[1] ** 0.5) * magnitude
        else:  # the output's rounding, and the panels' weights rounded to the dtype
            bound = 2.0 ** -7 * magnitude.clamp_min(expected.abs()) + 1e-3
        assert ((out.double() - expected).abs() <= bound).all(), ((out.double() - expected).abs() / bound).max()
