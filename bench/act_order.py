#!/usr/bin/env python
"""What an act order costs at decode on the CPU: one stream's greedy tok/s with every decoder
projection taking its input's columns in a random order (Linear.input_order, as act-order GPTQ and
compressed-tensors checkpoints load) against the same engine without, rounds taking turns.

    python bench/act_order.py --model small-q4_0.gguf --rounds 3

The orders gather each product's input (index_select in the layers, a gather in the C++ decoder
stack) before the product, which is unchanged.
"""

from __future__ import annotations

import argparse

import torch

from kvserve import Engine
from stream_rate import add_stream_arguments, rounds_of_two, tokens_per_s


def set_orders(engine: Engine, orders: dict | None) -> None:
    model = engine.runner.model
    for linear in model.decoder_linears():
        if orders is None:
            linear.input_order = None
        else:
            linear.prepare_input_order()
            linear.input_order.copy_(orders[linear])
    model._decoder_stack = None  # rebuilt over the new orders


def main(argv: list[str] | None = None) -> list[tuple[float, float]]:
    """Each round's (in order, act order) tok/s (also printed)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stream_arguments(parser)
    args = parser.parse_args(argv)
    engine = Engine(args.model, dtype=args.dtype, device="cpu")
    generator = torch.Generator().manual_seed(0)
    orders = {linear: torch.randperm(linear.input_size, generator=generator)
              for linear in engine.runner.model.decoder_linears()}

    def rate(orders_: dict | None) -> float:
        set_orders(engine, orders_)
        return tokens_per_s(engine, args.output_len)

    return rounds_of_two(args.rounds, ("in order", lambda: rate(None)), ("act order", lambda: rate(orders)))


if __name__ == "__main__":
    main()
