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

from kvserve.loader import gguf_weights
from stream_rate import add_stream_arguments, loaded_rate, rounds_of_two

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

    def rate(read_as_codes: bool) -> float:
        for name, types in lists.items():
            setattr(gguf_weights, name, types if read_as_codes else tuple(t for t in types if t != block))
        return loaded_rate(args)

    try:
        return rounds_of_two(args.rounds, (f"{args.block} widened", lambda: rate(False)),
                             ("as codes", lambda: rate(True)))
    finally:
        for name, types in lists.items():
            setattr(gguf_weights, name, types)


if __name__ == "__main__":
    main()
