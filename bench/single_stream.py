#!/usr/bin/env python
"""Single-stream decode, kvserve against llama.cpp, taking turns round by round on one machine:

    python bench/single_stream.py --presets tiny small 0.5b --repeat 3
    python bench/single_stream.py --presets small 0.5b --quant Q4_0    # both on a 4-bit GGUF file

Per preset and round: `kvserve bench latency --batch-size 1 --input-len 128 --output-len 128`
(decode tok/s over the 127 tokens after the first), then `llama-bench -p 0 -n 128` (tg128: 128
tokens decoded from an empty context) on the preset's GGUF from bench/anchors/convert_gguf.sh, both
on every core. kvserve's context is the longer of the two (128 prompt tokens first). With --quant,
both engines read the preset's GGUF file of that llama.cpp type (bench/anchors/quantize_gguf.sh;
kvserve computes in --dtype). Writes bench/results/single-stream_<dtype>[_<quant>].md with each
engine's best round and all rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ANCHORS = Path(os.environ.get("KVSERVE_CACHE_DIR", Path.home() / ".cache" / "kvserve")) / "anchors"
DTYPE_SUFFIX = {"bfloat16": "bf16", "float32": "f32"}


def gguf_path(preset: str, dtype: str, quant: str | None) -> Path:
    return ANCHORS / "gguf" / f"{preset}-{(quant or DTYPE_SUFFIX[dtype]).lower()}.gguf"


def kvserve_round(preset: str, dtype: str, quant: str | None) -> dict:
    model = ["--model", str(gguf_path(preset, dtype, quant))] if quant else ["--preset", preset]
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "latency.json"
        subprocess.run(["kvserve", "bench", "latency", *model, "--dtype", dtype, "--batch-size", "1",
                        "--input-len", "128", "--output-len", "128", "--num-iters", "3", "--skip-tokenizer-init",
                        "--disable-tqdm", "--result-json", str(result)], check=True, stdout=subprocess.DEVNULL)
        return json.loads(result.read_text())


def llama_round(preset: str, dtype: str, quant: str | None, threads: int) -> float:
    out = subprocess.run([str(ANCHORS / "llama.cpp" / "build" / "bin" / "llama-bench"), "-m",
                          str(gguf_path(preset, dtype, quant)), "-p", "0",
                          "-n", "128", "-t", str(threads), "-r", "3", "-o", "json"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)[0]["avg_ts"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "0.5b"])
    parser.add_argument("--dtype", choices=sorted(DTYPE_SUFFIX), default="bfloat16")
    parser.add_argument("--quant", default=None, help="a llama.cpp quantization type, e.g. Q4_0: both engines "
                        "read the preset's GGUF file of that type")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    threads = os.cpu_count()
    load_before = os.getloadavg()[0]
    rows = []
    for preset in args.presets:
        ours, theirs = [], []
        for round_index in range(args.repeat):
            ours.append(kvserve_round(preset, args.dtype, args.quant))
            theirs.append(llama_round(preset, args.dtype, args.quant, threads))
            print(f"{preset} round {round_index + 1}: kvserve {ours[-1]['decode_tok_s']:.0f} tok/s, "
                  f"llama.cpp {theirs[-1]:.0f} tok/s", file=sys.stderr)
        best = max(ours, key=lambda r: r["decode_tok_s"])
        rounds = ", ".join(f"{r['decode_tok_s']:,.0f}" for r in ours) + " / " + ", ".join(f"{t:,.0f}" for t in theirs)
        rows.append(f"| {preset} | {best['decode_tok_s']:,.0f} | {best['median_decode_step_ms']:.2f} / "
                    f"{best['p99_decode_step_ms']:.2f} | {best['median_ttft_ms']:.1f} | {max(theirs):,.0f} | "
                    f"{best['decode_tok_s'] / max(theirs):.2f}× | {rounds} |")
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    suffix = f"_{args.quant.lower()}" if args.quant else ""
    quant = f" --quant {args.quant}" if args.quant else ""
    text = "\n".join([
        f"### Single-stream decode, {args.dtype}" + (f", {args.quant} GGUF" if args.quant else ""),
        "",
        f"{stamp}; {threads} threads each; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after;",
        f"`python bench/single_stream.py --presets {' '.join(args.presets)} --dtype {args.dtype}{quant} "
        f"--repeat {args.repeat}`.",
        "",
        "| preset | kvserve decode tok/s | kvserve median / p99 step ms | kvserve TTFT (128 tokens) ms | "
        "llama.cpp tg128 tok/s | kvserve ÷ llama.cpp | all rounds (kvserve / llama.cpp) |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"single-stream_{args.dtype}{suffix}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
