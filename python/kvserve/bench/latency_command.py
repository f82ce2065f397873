"""`kvserve bench latency`: one fixed batch, timed step by step.

B requests of I prompt tokens (WORKLOAD.md's draw; every iteration gets its own prompts, so that no
iteration hits what another left in the prefix cache) are added at once and stepped until each has
produced exactly O tokens, greedily. Every engine step is timed:

    add B requests, step, step, ..., step │ step, step, ..., step
    └── prefill: until every request ───┘ └── decode: O - 1 steps of B tokens ──┘
        has its first token

Reported, pooled over the iterations: prefill time, decode ms/step, each request's TTFT and
end-to-end latency (mean, median, percentiles), and decode tok/s = B · decode steps ÷ their time;
at batch 1 that is the single-stream decode speed llama-bench's tg128 reports.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np

from kvserve.bench.datasets import offline_prompts
from kvserve.bench.engine_setup import build_engine, fixed_length, run_settings
from kvserve.bench.machine import peak_gpu_memory_bytes, peak_rss_bytes
from kvserve.bench.metrics import LatencyStats, parse_percentiles
from kvserve.bench.results import WIDTH, centered, latency_fields, latency_rows, row, write_json

GB = 1e9
# key, label in the table, heading
_SECTIONS = (
    ("prefill", "prefill", "Prefill (until the batch's last first token)"),
    ("decode_step", "decode step", "Decode step"),
    ("ttft", "TTFT", "Time to First Token"),
    ("e2el", "E2EL", "Request latency"),
)


@dataclass
class BatchTimeline:
    """One iteration; seconds, times from just before the first add_request."""

    step_s: list[float]
    num_prefill_steps: int  # the first steps, until every request has its first token
    ttft_s: list[float]  # per request, at the end of the step that produced its first token
    e2el_s: list[float]  # per request, at the end of the step that finished it

    @property
    def decode_step_s(self) -> list[float]:
        return self.step_s[self.num_prefill_steps:]


def run_batch(engine, prompts: np.ndarray, output_len: int, tag: str) -> BatchTimeline:
    """Adds one request per row of `prompts` and steps the engine until all have finished."""
    request_ids = [f"{tag}-{i}" for i in range(len(prompts))]
    params = fixed_length(output_len)
    start = time.perf_counter()
    for request_id, prompt in zip(request_ids, prompts):
        engine.add_request(request_id, {"prompt_token_ids": prompt.tolist()}, params)
    states = [engine.requests[r] for r in request_ids]
    ttft: list[float | None] = [None] * len(states)
    e2el: list[float | None] = [None] * len(states)
    steps: list[float] = []
    num_prefill_steps = None
    while engine.has_unfinished_requests():
        step_start = time.perf_counter()
        engine.step()
        now = time.perf_counter()
        steps.append(now - step_start)
        for i, state in enumerate(states):  # after the clock: not part of any step's time
            if ttft[i] is None and state.metrics.first_token_time is not None:
                ttft[i] = now - start
            if e2el[i] is None and state.finished:
                e2el[i] = now - start
        if num_prefill_steps is None and None not in ttft:
            num_prefill_steps = len(steps)
    lengths = sorted({len(state.sequences[0].token_ids) for state in states})
    if lengths != [output_len]:
        raise RuntimeError(f"expected every request to produce {output_len} tokens, got lengths {lengths}")
    return BatchTimeline(steps, num_prefill_steps, ttft, e2el)


def check_flags(args: argparse.Namespace) -> tuple[float, ...]:
    """The percentiles to report; ValueError on a bad flag."""
    for flag, value, low in (("--batch-size", args.batch_size, 1), ("--input-len", args.input_len, 1),
                             ("--output-len", args.output_len, 2), ("--num-iters", args.num_iters, 1),
                             ("--num-iters-warmup", args.num_iters_warmup, 0)):
        if value < low:
            why = " (the first token comes from the prefill; decode steps need more)" if flag == "--output-len" else ""
            raise ValueError(f"{flag} {value}: expected >= {low}{why}")
    if args.batch_size > args.max_num_seqs:
        raise ValueError(f"--batch-size {args.batch_size} exceeds --max-num-seqs {args.max_num_seqs}: "
                         "the batch would not run as one")
    return parse_percentiles(args.metric_percentiles)


def latency_stats(timelines: list[BatchTimeline], percentiles: tuple[float, ...]) -> dict[str, LatencyStats]:
    samples = {
        "prefill": [max(t.ttft_s) for t in timelines],
        "decode_step": [s for t in timelines for s in t.decode_step_s],
        "ttft": [s for t in timelines for s in t.ttft_s],
        "e2el": [s for t in timelines for s in t.e2el_s],
    }
    return {key: LatencyStats.of(samples[key], percentiles) for key, _, _ in _SECTIONS}


def decode_tok_s(timelines: list[BatchTimeline], batch_size: int) -> float:
    steps = [s for t in timelines for s in t.decode_step_s]
    return batch_size * len(steps) / sum(steps)


def format_table(result: dict, stats: dict[str, LatencyStats]) -> str:
    lines = [
        centered(" Latency Benchmark Result ", "="),
        row("Batch size:", result["batch_size"]),
        row("Input / output tokens per request:", f"{result['input_len']} / {result['output_len']}"),
        row("Iterations (after warm-up):", result["num_iters"]),
        row("Decode throughput (tok/s):", result["decode_tok_s"]),
        row("Peak RSS (GB):", result["peak_rss_bytes"] / GB),
    ]
    for key, short, heading in _SECTIONS:
        lines += latency_rows(heading, short, stats[key])
    lines.append("=" * WIDTH)
    return "\n".join(lines)


def run_latency(args: argparse.Namespace) -> int:
    try:
        percentiles = check_flags(args)
        engine, load_s = build_engine(args)
        rounds = args.num_iters_warmup + args.num_iters
        prompts = offline_prompts(rounds * args.batch_size, args.input_len, engine.model_config.vocab_size)
        prompts = prompts.reshape(rounds, args.batch_size, args.input_len)
        for k in range(args.num_iters_warmup):
            run_batch(engine, prompts[k], args.output_len, f"warmup-{k}")
        from tqdm.auto import tqdm

        timelines = [run_batch(engine, prompts[args.num_iters_warmup + k], args.output_len, f"iteration-{k}")
                     for k in tqdm(range(args.num_iters), desc="Iterations", disable=args.disable_tqdm)]
    except (ValueError, RuntimeError) as e:
        raise SystemExit(f"kvserve bench latency: {e}") from None
    stats = latency_stats(timelines, percentiles)
    result = run_settings(args, engine, load_s) | {
        "batch_size": args.batch_size,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "num_iters_warmup": args.num_iters_warmup,
        "num_iters": args.num_iters,
        "decode_tok_s": decode_tok_s(timelines, args.batch_size),
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_gpu_memory_bytes": peak_gpu_memory_bytes(engine.device),
    }
    for key, stat in stats.items():
        result |= latency_fields(key, stat)
    result["iterations"] = [
        {"num_prefill_steps": t.num_prefill_steps, "step_ms": [s * 1e3 for s in t.step_s],
         "ttft_ms": [s * 1e3 for s in t.ttft_s], "e2el_ms": [s * 1e3 for s in t.e2el_s]}
        for t in timelines
    ]
    print(format_table(result, stats))
    if args.result_json is not None:
        write_json(args.result_json, result)
    return 0
