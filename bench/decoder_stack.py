#!/usr/bin/env python
"""Decode steps of a few sequences on the CPU through the C++ decoder stack or layer by layer
(kvserve.models.llama.DECODER_STACK_MAX_TOKENS), side by side in one process, rounds taking turns:
which way a step of that many tokens should go on this CPU.

    python bench/decoder_stack.py --preset small --dtype float32 --batch 8
    python bench/decoder_stack.py --preset 0.5b --dtype float32 --batch 16 --output-len 32

Each round decodes --batch prompts of --input-len random tokens to --output-len tokens (greedy, EOS
ignored, no detokenization), once with steps of up to --batch tokens in the stack and once with the
layers taking every step past 4 tokens; prints output tok/s per round.
"""

from __future__ import annotations

import argparse
import time

import kvserve.models.llama as llama
from kvserve import Engine
from kvserve.bench.checkpoint import ensure_model
from kvserve.bench.datasets import offline_prompts
from kvserve.bench.engine_setup import fixed_length
from kvserve.bench.presets import MODEL_PRESETS


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    """The rounds' output tok/s of each way (also printed)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=list(MODEL_PRESETS), default="small")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, default=8, help="sequences decoded together")
    parser.add_argument("--input-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    engine = Engine(str(ensure_model(args.preset)), dtype=args.dtype, kv_cache_memory_gb=1)
    prompts = [{"prompt_token_ids": p.tolist()}
               for p in offline_prompts(args.batch, args.input_len, engine.model_config.vocab_size)]
    params = fixed_length(args.output_len, detokenize=False)
    engine.generate(prompts, params, use_tqdm=False)  # warm-up
    ways = {"layers past 4 tokens": 4, f"stack up to {args.batch} tokens": args.batch}
    rates: dict[str, list[float]] = {name: [] for name in ways}
    print(f"{args.preset} {args.dtype}, {args.batch} sequences, CPU ISA {llama._C.ops.cpu_isa()}; output tok/s")
    chosen = llama.DECODER_STACK_MAX_TOKENS
    try:
        for round_index in range(args.rounds):
            for name, limit in ways.items():
                llama.DECODER_STACK_MAX_TOKENS = limit
                start = time.perf_counter()
                outputs = engine.generate(prompts, params, use_tqdm=False)
                seconds = time.perf_counter() - start
                assert all(len(o.outputs[0].token_ids) == args.output_len for o in outputs)
                rates[name].append(args.batch * args.output_len / seconds)
                print(f"round {round_index}: {name}: {rates[name][-1]:.0f}", flush=True)
    finally:
        llama.DECODER_STACK_MAX_TOKENS = chosen
    return rates


if __name__ == "__main__":
    main()
