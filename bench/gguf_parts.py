#!/usr/bin/env python
"""What reading a fused projection of two kinds of GGUF blocks part by part gains (Linear.prepare_parts:
a Q4_K_M file's Q6_K v beside Q4_K q and k; a Q3_K_M file's Q5_K v, of neither kind, beside Q3_K q
and k): one stream's greedy tok/s on the CPU with those projections in parts against the same file
with them widened to the dtype whole (as kvserve loaded them before), rounds taking turns.

    python bench/gguf_parts.py --model small-q4_k_m.gguf --rounds 3
"""

from __future__ import annotations

import argparse

from kvserve.loader import load as load_module
from kvserve.models.weight_loading import linear_parts
from stream_rate import add_stream_arguments, loaded_rate, rounds_of_two

keep_codes = load_module._keep_codes


def widening_mixed(module, weights):
    """_keep_codes over a file whose projections of more than one kind of blocks (or of codes and
    neither) are not offered as codes."""
    stored = weights.coded_names()
    mixed = {name for _, names in linear_parts(module, module.packed_modules)
             if len(set(load_module.code_kinds(stored, names))) > 1 for name in names}
    weights.coded_names = lambda: {kind: names - mixed for kind, names in stored.items()}
    return keep_codes(module, weights)


def main(argv: list[str] | None = None) -> list[tuple[float, float]]:
    """Each round's (widened, in parts) tok/s (also printed)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stream_arguments(parser)
    args = parser.parse_args(argv)

    def rate(keep) -> float:
        load_module._keep_codes = keep
        return loaded_rate(args)

    try:
        return rounds_of_two(args.rounds, ("widened", lambda: rate(widening_mixed)),
                             ("in parts", lambda: rate(keep_codes)))
    finally:
        load_module._keep_codes = keep_codes


if __name__ == "__main__":
    main()
