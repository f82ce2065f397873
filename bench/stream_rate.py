"""One stream's greedy decode rate on the CPU, for the scripts that set two ways of loading a model side
by side (act_order.py, gguf_parts.py, gguf_blocks.py), rounds taking turns."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from kvserve import Engine, SamplingParams


def add_stream_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a model kvserve loads (a GGUF file, a directory)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)


def tokens_per_s(engine: Engine, output_len: int) -> float:
    """The best of two timed generations of one 128-token prompt (after one untimed)."""
    params = SamplingParams(max_tokens=output_len, ignore_eos=True, temperature=0)
    prompt = {"prompt_token_ids": list(range(100, 228))}
    engine.generate([prompt], params, use_tqdm=False)
    best = 0.0
    for _ in range(2):
        start = time.perf_counter()
        engine.generate([prompt], params, use_tqdm=False)
        best = max(best, (output_len - 1) / (time.perf_counter() - start))
    return best


def loaded_rate(args: argparse.Namespace) -> float:
    """tokens_per_s of an Engine loaded afresh from the arguments (add_stream_arguments')."""
    return tokens_per_s(Engine(args.model, dtype=args.dtype, device="cpu"), args.output_len)


def rounds_of_two(rounds: int, first: tuple[str, Callable[[], float]],
                  second: tuple[str, Callable[[], float]]) -> list[tuple[float, float]]:
    """Each round's (first, second) rates, each (name, measure) measured in turn, printed with their ratio."""
    (first_name, measure_first), (second_name, measure_second) = first, second
    rates = []
    for round_ in range(rounds):
        a, b = measure_first(), measure_second()
        print(f"round {round_}: {first_name} {a:.0f} tok/s, {second_name} {b:.0f} tok/s ({b / a:.3f}x)", flush=True)
        rates.append((a, b))
    return rates
