#!/usr/bin/env python
"""What a narrower KV cache (kv_cache_dtype "fp8", vLLM's; or "bfloat16" for a float32 model) does
for offline throughput when the KV cache's memory is what limits the batch: `kvserve bench
throughput` with a KV budget that holds about --seqs sequences in the model's dtype, run three ways
in turns: that budget in the model's dtype, the same budget in the narrower cache (fp8: 2x the
tokens of a 16-bit cache, 4x of float32's), and the budget that holds its token count in the
model's dtype (so that the difference between the last two is what reading and writing narrower
keys and values costs or saves). Reported per setting: the KV cache's tokens, output and total
tok/s (median of the rounds, and every round), preemptions and peak RSS.

    python bench/kv_cache_dtype.py [--model small] [--dtype float32] [--num-prompts 32] [--input-len 256]
                                   [--output-len 256] [--seqs 8] [--kv-cache-dtype fp8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from kvserve.bench.checkpoint import ensure_model
from kvserve.bench.presets import MODEL_PRESETS
from kvserve.kv_cache import KV_CACHE_DTYPES, kv_bytes_per_token
from kvserve.model_config import ModelConfig


def run(model_dir: Path, args: argparse.Namespace, memory_gb: float, kv_cache_dtype: str, result: Path) -> dict:
    cmd = [sys.executable, "-m", "kvserve.cli", "bench", "throughput", "--model", str(model_dir),
           "--dtype", args.dtype, "--num-prompts", str(args.num_prompts), "--input-len", str(args.input_len),
           "--output-len", str(args.output_len), "--max-model-len", str(args.input_len + args.output_len),
           "--kv-cache-memory", f"{memory_gb:.6f}",
           "--kv-cache-dtype", kv_cache_dtype, "--skip-tokenizer-init", "--disable-tqdm", "--result-json", str(result)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small", choices=list(MODEL_PRESETS))
    parser.add_argument("--dtype", default="float32", choices=("bfloat16", "float32"))
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--input-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--seqs", type=int, default=8, help="sequences the smaller budget holds in --dtype")
    parser.add_argument("--kv-cache-dtype", default="fp8", choices=[n for n in KV_CACHE_DTYPES if n != "auto"])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    model_dir = ensure_model(args.model)
    per_token = kv_bytes_per_token(ModelConfig.from_pretrained(model_dir), getattr(torch, args.dtype))
    budget = (args.seqs * (args.input_len + args.output_len) + 16) * per_token / 2**30
    ratio = getattr(torch, args.dtype).itemsize // KV_CACHE_DTYPES[args.kv_cache_dtype].itemsize
    settings = {f"{args.dtype}, {budget:.3f} GiB": (budget, "auto"),
                f"{args.kv_cache_dtype}, {budget:.3f} GiB": (budget, args.kv_cache_dtype),
                f"{args.dtype}, {ratio * budget:.3f} GiB": (ratio * budget, "auto")}
    rounds: dict[str, list[dict]] = {name: [] for name in settings}
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.repeat):
            for name, (memory_gb, kv_cache_dtype) in settings.items():
                r = run(model_dir, args, memory_gb, kv_cache_dtype, Path(scratch) / "result.json")
                rounds[name].append(r)
                print(f"round {round_index + 1}, {name}: {r['output_tok_s']:.0f} output tok/s, "
                      f"{r['num_preemptions']} preemptions", flush=True)

    print(f"\n{args.model} {args.dtype}, {args.num_prompts} prompts of {args.input_len} tokens, {args.output_len} out; "
          f"medians of {args.repeat} rounds\n")
    print("| setting | KV cache tokens | output tok/s | total tok/s | rounds (output tok/s) | preemptions | "
          "peak RSS GB |")
    print("|---|---|---|---|---|---|---|")
    for name, results in rounds.items():
        output = [r["output_tok_s"] for r in results]
        print(f"| {name} | {results[0]['kv_cache_tokens']} | {statistics.median(output):.0f} | "
              f"{statistics.median(r['total_tok_s'] for r in results):.0f} | "
              f"{', '.join(f'{x:.0f}' for x in output)} | "
              f"{statistics.median(r['num_preemptions'] for r in results):.0f} | "
              f"{max(r['peak_rss_bytes'] for r in results) / 1e9:.2f} |")


if __name__ == "__main__":
    main()
