"""One stream's greedy decode rate on the CPU, for the scripts that set two ways of loading a model side
by side (act_order.py, gguf_parts.py)."""

from __future__ import annotations

import argparse
import time

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
