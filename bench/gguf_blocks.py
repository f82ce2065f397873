#!/usr/bin/env python
"""What reading one more GGUF block type as codes gains: one stream's greedy tok/s on the CPU with the
file's tensors of that type read as codes (kvserve.loader.gguf_int8, gguf_uint4) against the same file
with them widened to the dtype at load (as kvserve loaded them before it read that type), rounds
taking turns.

    python bench/gguf_blocks.py --model small-q3_k_m.gguf --block Q3_K --rounds 3
"""

from __future__ import annotations

import argparse

from gguf import GGMLQuantizationType

from kvserve import Engine
from kvserve.loader import gguf_weights
from stream_rate import add_stream_arguments, tokens_per_s

READ_AS_CODES = {"int8": "INT8_TYPES", "uint4": "UINT4_TYPES"}


def main(argv: list[str] | None = None) -> list[tuple[float, float]]:
    """Each round's (widened, as codes) tok/s (also printed)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stream_arguments(parser)
    parser.add_argument("--block", required=True, help="a block type kvserve reads as codes, e.g. Q3_K")
    args = parser.parse_args(argv)
    block = GGMLQuantizationType[args.block]
    lists = {name: getattr(gguf_weights, name) for name in READ_AS_CODES.values()}
    if not any(block in types for types in lists.values()):
        parser.error(f"{args.block} blocks are not read as codes")
    rates = []
    try:
        for round_ in range(args.rounds):
            for name, types in lists.items():
                setattr(gguf_weights, name, tuple(t for t in types if t != block))
            widened = tokens_per_s(Engine(args.model, dtype=args.dtype, device="cpu"), args.output_len)
            for name, types in lists.items():
                setattr(gguf_weights, name, types)
            codes = tokens_per_s(Engine(args.model, dtype=args.dtype, device="cpu"), args.output_len)
            print(f"round {round_}: {args.block} widened {widened:.0f} tok/s, as codes {codes:.0f} tok/s "
                  f"({codes / widened:.3f}x)", flush=True)
            rates.append((widened, codes))
    finally:
        for name, types in lists.items():
            setattr(gguf_weights, name, types)
    return rates


if __name__ == "__main__":
    main()
