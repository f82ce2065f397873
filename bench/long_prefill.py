#!/usr/bin/env python
"""What long_prefill_token_threshold (vLLM's) does for a server whose prompts differ widely in length:
`kvserve serve` with and without the cap, in turns, each under `kvserve bench serve` (random prompts
of IN tokens +- RATIO, OUT tokens each, Poisson arrivals). A long prompt computed whole holds up the
decodes running beside it and the short prompts that arrive behind it; capped, it takes a slice of
each step. Reported: TTFT of the shorter and the longer half of the prompts, ITL and TPOT (the
decodes' pace), output throughput; each setting's median over its rounds (the rounds alternate the
settings, each round's prompts and arrivals the same for both). Keep the load under what the
server computes (its total tok/s): a saturated server's TTFT is its queue, whatever the cap.

    python bench/long_prefill.py [--model small] [--dtype float32] [--threshold 256] [--num-prompts 32]
                                 [--input-len 1024] [--range-ratio 0.9] [--output-len 64] [--request-rate 0.8]
                                 [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from engines import Settings, run_serve

from kvserve.bench.checkpoint import ensure_model
from kvserve.bench.metrics import LatencyStats
from kvserve.bench.presets import MODEL_PRESETS, parse_case


def summarize(result: dict) -> dict[str, float]:
    """The round's figures, in ms (throughput in tok/s), percentiles as `kvserve bench serve` takes them."""
    lengths, ttfts = result["input_lens"], result["ttfts"]
    middle = statistics.median(lengths)
    short = LatencyStats.of([t for n, t in zip(lengths, ttfts) if n <= middle], (90,))
    long = LatencyStats.of([t for n, t in zip(lengths, ttfts) if n > middle], (90,))
    itls = LatencyStats.of([gap for gaps in result["itls"] for gap in gaps], (99,))
    return {"ttft short p50": short.median, "ttft short p90": short.percentiles[90],
            "ttft long p50": long.median, "ttft long p90": long.percentiles[90],
            "itl p50": itls.median, "itl p99": itls.percentiles[99],
            "tpot p50": result["median_tpot_ms"], "tpot p99": result["p99_tpot_ms"],
            "output tok/s": result["output_throughput"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small", choices=list(MODEL_PRESETS))
    parser.add_argument("--dtype", default="float32", choices=("bfloat16", "float32"))
    parser.add_argument("--threshold", type=int, default=256)
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--input-len", type=int, default=1024)
    parser.add_argument("--range-ratio", type=float, default=0.9)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--request-rate", type=float, default=0.8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    model_dir = ensure_model(args.model)
    case = parse_case(f"serve-{args.num_prompts}-{args.input_len}-{args.output_len}@{args.request_rate:g}")
    settings = {"no cap": (), f"cap {args.threshold}": ("--long-prefill-token-threshold", str(args.threshold))}
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in settings}
    with tempfile.TemporaryDirectory() as logs:
        for round_index in range(args.repeat):
            for name, server_args in settings.items():
                s = Settings(os.cpu_count(), "auto", 0.0, Path(logs), server_args=server_args,
                             load_args=("--random-range-ratio", str(args.range_ratio), "--seed", str(round_index)))
                run = run_serve("kvserve", case, args.model, model_dir, args.dtype, s)
                if not run.result:
                    raise SystemExit(f"{name}: {run.note}")
                rounds[name].append(summarize(run.result))
                print(f"round {round_index + 1}, {name}: " +
                      ", ".join(f"{k} {v:.0f}" for k, v in rounds[name][-1].items()), flush=True)

    keys = list(next(iter(rounds.values()))[0])
    print(f"\n{args.model} {args.dtype}, {args.num_prompts} prompts of {args.input_len} +- {args.range_ratio:.0%} "
          f"tokens, {args.output_len} out, {args.request_rate:g} requests/s; medians of {args.repeat} rounds "
          "(ms; throughput tok/s)\n")
    print("| setting | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, results in rounds.items():
        print(f"| {name} | " + " | ".join(f"{statistics.median(r[k] for r in results):.0f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
