#!/usr/bin/env python
"""The CPU projections' paths side by side, at the presets' weight shapes and decode/prefill row
counts: kvserve.ops.linear on the plain weight and on its interleaved copy, torch's F.linear (oneDNN
or MKL on the plain weight), and oneDNN on the blocked weight (the copies Linear.finalize_weights
keeps; kvserve/models/layers/linear.py picks among them); and kvserve.ops.linear over the weight's
e4m3 codes (quantization="fp8", which takes it at every row count), over its uint4 codes
(kvserve.uint4: a GGUF file's 4-bit blocks) and over its int8 codes (kvserve.int8: 8-bit blocks, and
6-bit ones, whose codes AVX512-BF16 reads as bfloat16 pairs).

    python bench/linear.py                      # small's gate_up and the 0.5b LM head, bf16 and fp32
    python bench/linear.py --shapes 2816x512 --rows 1 4 8 64 --dtypes bfloat16

Each call rotates over enough copies of the weight to overflow the 32 MiB L3, so that few-row
products read their weights from memory as a model's layers do. Prints GFLOP/s (best of --repeat) per
path and which path linear() takes.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from kvserve import ops
from kvserve.bench.machine import call_seconds
from kvserve.int8 import quantize_int8
from kvserve.models.layers.linear import OPS_MAX_ROWS, fast_copies
from kvserve.quantization import quantize_fp8
from kvserve.uint4 import quantize_uint4

CACHE_BYTES = 96 << 20


def measure(n: int, k: int, rows: int, dtype: torch.dtype, repeat: int) -> dict[str, float]:
    copies = max(1, CACHE_BYTES // (n * k * torch.finfo(dtype).bits // 8))
    weights = [torch.randn(n, k).to(dtype) for _ in range(copies)]
    packed, interleaved = zip(*(fast_copies(w) for w in weights))
    quantized = [quantize_fp8(w) for w in weights]
    uint4 = [quantize_uint4(w) for w in weights]
    int8 = [quantize_int8(w) for w in weights]
    int6 = [quantize_int8(w, bits=6) for w in weights]
    x = torch.randn(rows, k).to(dtype)
    out = torch.empty(rows, n, dtype=dtype)
    paths = {
        "ops.linear": lambda: [ops.linear(out, x, w) for w in weights],
        "F.linear": lambda: [F.linear(x, w) for w in weights],
        "ops.linear e4m3": lambda: [ops.linear(out, x, codes, weight_scale=scale) for codes, scale in quantized],
        "ops.linear uint4": lambda: [ops.linear(out, x, codes, weight_scale=scale, weight_offset=offset)
                                     for codes, scale, offset in uint4],
        "ops.linear int8": lambda: [ops.linear(out, x, codes, weight_scale=scale) for codes, scale in int8],
        "ops.linear int8 6-bit": lambda: [ops.linear(out, x, codes, weight_scale=scale) for codes, scale in int6],
    }
    if interleaved[0] is not None:
        paths["ops.linear interleaved"] = lambda: [ops.linear(out, x, w) for w in interleaved]
    if packed[0] is not None:
        paths["oneDNN blocked"] = lambda: [torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "")
                                           for p in packed]
    flops = 2 * rows * n * k * copies
    return {name: flops / min(call_seconds(fn, repeat)) / 1e9 for name, fn in paths.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["2816x512", "32000x896"], help="NxK (out x in features)")
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 4, 8, 16, 64, 256])
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; GFLOP/s, best of {args.repeat}\n")
    columns = ("ops.linear", "ops.linear interleaved", "F.linear", "oneDNN blocked", "ops.linear e4m3",
               "ops.linear uint4", "ops.linear int8", "ops.linear int8 6-bit")
    print(f"| weight N x K | dtype | rows | {' | '.join(columns)} | linear() takes |")
    print("|---" * (len(columns) + 4) + "|")
    for shape in args.shapes:
        n, k = (int(v) for v in shape.split("x"))
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            for rows in args.rows:
                rates = measure(n, k, rows, dtype, args.repeat)
                few_rows = "ops.linear interleaved" if "ops.linear interleaved" in rates else "ops.linear"
                taken = few_rows if rows <= OPS_MAX_ROWS or "oneDNN blocked" not in rates else "oneDNN blocked"
                cells = " | ".join(f"{rates[p]:.0f}" if p in rates else "–" for p in columns)
                print(f"| {n} x {k} | {dtype_name} | {rows} | {cells} | {taken} |", flush=True)


if __name__ == "__main__":
    main()
