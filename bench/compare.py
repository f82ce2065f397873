#!/usr/bin/env python
"""Runs one WORKLOAD.md case on several engines in turn, on this machine, and writes a markdown
table, the raw results and PNG plots into bench/results/.

    python bench/compare.py offline-256-64-64 --model tiny [--dtype bfloat16] [--engines kvserve vllm ...]
    python bench/compare.py serve-64-128-128@4 --model small

Offline engines: kvserve, hf-sequential, hf-batch (transformers generate), vllm, llama.cpp.
Serving engines: kvserve, vllm, llama.cpp (each server load-tested by `kvserve bench serve`).
Run it from kvserve's venv with the `bench` extra; the anchors come from bench/anchors/. An engine
that is missing is skipped with a note. Nothing else heavy should run meanwhile (WORKLOAD.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import report
import torch
from engines import OFFLINE_ENGINES, SERVE_ENGINES, Run, Settings, engine_version, run_offline, run_serve

from kvserve.bench.checkpoint import cache_dir, ensure_model
from kvserve.bench.datasets import offline_prompts, warmup_prompt
from kvserve.bench.flops import workload_flops
from kvserve.bench.machine import cpu_name, measure_gemm_rate
from kvserve.bench.presets import MODEL_PRESETS, parse_case
from kvserve.model_config import ModelConfig

RESULTS = Path(__file__).resolve().parent / "results"


def best_of(engine: str, rounds: list):
    best = max(rounds, key=lambda r: r.output_tok_s)
    if best.result:
        best.version = engine_version(engine)
        if len(rounds) > 1:
            best.note += f"; best of {len(rounds)}: " + ", ".join(f"{r.output_tok_s:.0f}" for r in rounds)
    return best


def run_rounds(case, engines: list[str], preset: str, model_dir: Path, dtype: str, settings: Settings,
               repeat: int) -> list[Run]:
    """Each engine's best of `repeat` rounds. Engines take turns within each round, so that drift in
    the machine's speed hits all alike."""
    prompts = settings.log_dir / "prompts.npz"
    if case.kind == "offline":
        np.savez(prompts, prompts=offline_prompts(case.num_prompts, case.input_len),
                 warmup=warmup_prompt(case.input_len))
    rounds: dict[str, list[Run]] = {engine: [] for engine in engines}
    for round_index in range(repeat):
        for engine in engines:
            if rounds[engine] and not rounds[engine][0].result:
                continue  # skipped or failed: no later round either
            print(f"== {case.name} on {preset} ({dtype}): {engine}, round {round_index + 1}", flush=True)
            try:
                if case.kind == "serve":
                    run = run_serve(engine, case, preset, model_dir, dtype, settings)
                else:
                    run = run_offline(engine, case, preset, model_dir, dtype, prompts, settings)
            except RuntimeError as e:  # a failed engine is a result too; the others still run
                run = Run(engine, note=f"failed: {e}")
            print(f"   {run.output_tok_s:.0f} output tok/s" if run.result else f"   {run.note}", flush=True)
            rounds[engine].append(run)
    return [best_of(engine, rounds[engine]) for engine in engines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", help="offline-N-IN-OUT or serve-N-IN-OUT@RATE")
    parser.add_argument("--model", required=True, choices=list(MODEL_PRESETS))
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    parser.add_argument("--engines", nargs="+", help="default: every engine of the case's kind")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="cores each engine gets")
    parser.add_argument("--vllm-threads-bind", default=None,
                        help="VLLM_CPU_OMP_THREADS_BIND (default 0-<threads-1>, with libgomp preloaded); "
                             "'auto' for vLLM's own binding")
    parser.add_argument("--vllm-memory-utilization", type=float, default=0.25)
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds over all engines; each engine's best round is reported (the others are listed)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    case = parse_case(args.case)
    serve = case.kind == "serve"
    known = SERVE_ENGINES if serve else OFFLINE_ENGINES
    engines = args.engines or list(known)
    if unknown := [e for e in engines if e not in known]:
        parser.error(f"engines {unknown} cannot run a {case.kind} case: expected some of {', '.join(known)}")
    model_dir = ensure_model(args.model)
    stem = f"{case.name.replace('@', '_at_')}_{args.model}_{args.dtype}"
    args.out.mkdir(parents=True, exist_ok=True)
    # Engine logs and raw results stay outside the repo, for a look after a failure.
    log_dir = cache_dir() / "compare-logs" / stem
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"logs: {log_dir}")
    settings = Settings(args.threads, args.vllm_threads_bind or f"0-{args.threads - 1}",
                        args.vllm_memory_utilization, log_dir)
    load_before = os.getloadavg()[0]
    efficiency_line = []
    if not serve:
        # One GEMM rate and one FLOP count for every engine: efficiencies differ only by wall time.
        torch.set_num_threads(args.threads)
        gemm = measure_gemm_rate(getattr(torch, args.dtype))
        flops = workload_flops(ModelConfig.from_pretrained(model_dir),
                               [(case.input_len, case.output_len)] * case.num_prompts)
        efficiency_line = [f"Compute efficiency = {flops / 1e9:.0f} GFLOP of model FLOPs (kvserve.bench.flops) ÷ wall "
                           f"time ÷ {gemm.flops_per_s / 1e9:.0f} GFLOP/s, torch's {gemm.dtype} GEMM rate here "
                           f"(best of {gemm.repeats} `torch.mm` {gemm.size}³, {gemm.threads} threads, "
                           "measured before the engines ran)."]
    runs = run_rounds(case, engines, args.model, model_dir, args.dtype, settings, args.repeat)
    if not serve:
        for run in runs:
            if run.result:
                run.compute_efficiency = flops / run.result["wall_s"] / gemm.flops_per_s

    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = f"{case.name} on {args.model}, {args.dtype}"
    header = [f"{date}; {cpu_name()}, {os.cpu_count()} cores; load average {load_before:.1f} before, "
              f"{os.getloadavg()[0]:.1f} after (other work on the machine skews figures);",
              f"`python bench/compare.py {shlex.join(sys.argv[1:])}`.", *efficiency_line]
    (args.out / f"{stem}.md").write_text(report.markdown(title, header, runs, serve))
    (args.out / f"{stem}.json").write_text(json.dumps([asdict(r) for r in runs], indent=1) + "\n")
    if any(r.result for r in runs):
        report.throughput_plot(args.out / f"{stem}_throughput.png", title, runs, serve)
        if serve:
            report.latency_cdf_plot(args.out / f"{stem}_latency_cdf.png", title, runs)
    print((args.out / f"{stem}.md").read_text())


if __name__ == "__main__":
    main()
