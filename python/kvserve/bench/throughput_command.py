"""`kvserve bench throughput`: offline throughput, measured as WORKLOAD.md says.

    load the Engine ─► one warm-up request ─► clock ─► generate(every request at once) ─► clock

Requests are greedy and produce exactly their output length (EOS ignored); the run fails unless each
does. The warm-up prompt (`datasets.warmup_prompt`) is drawn apart from the benchmark's, so that it
leaves nothing in the prefix cache for them. Then torch's GEMM rate is measured in the same process
(kvserve.bench.machine), and the compute efficiency is the workload's model FLOPs
(kvserve.bench.flops) ÷ wall time ÷ that rate.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from kvserve.bench.cli import resolve_dataset
from kvserve.bench.datasets import SampleRequest, offline_prompts, warmup_prompt
from kvserve.bench.engine_setup import build_engine, fixed_length, run_settings
from kvserve.bench.flops import workload_flops
from kvserve.bench.machine import measure_gemm_rate, peak_gpu_memory_bytes, peak_rss_bytes
from kvserve.bench.presets import parse_case
from kvserve.bench.results import WIDTH, centered, row, write_json
from kvserve.bench.sharegpt import read_conversations, sharegpt_requests

GB = 1e9


def check_workload_flags(args: argparse.Namespace) -> None:
    """Fills num_prompts / input_len / output_len from --case, and args.dataset from vLLM's
    --dataset-name/--dataset-path; ValueError on a bad combination."""
    resolve_dataset(args)
    lengths = {"--num-prompts": args.num_prompts, "--input-len": args.input_len, "--output-len": args.output_len}
    if args.case is not None:
        case = parse_case(args.case)
        if case.kind != "offline":
            raise ValueError(f"--case {args.case}: expected an offline-N-IN-OUT case")
        if args.dataset != "random" or any(v is not None for v in lengths.values()):
            raise ValueError(f"--case {args.case} sets the dataset and every length: "
                             "drop --dataset, --num-prompts, --input-len and --output-len")
        args.num_prompts, args.input_len, args.output_len = case.num_prompts, case.input_len, case.output_len
        return
    if args.dataset == "random":
        missing = [flag for flag, value in lengths.items() if value is None]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}: the random dataset needs --num-prompts, --input-len "
                             "and --output-len (or --case offline-N-IN-OUT)")
    else:
        if args.input_len is not None:
            raise ValueError(f"--input-len {args.input_len}: a dataset file sets the prompts; drop it")
        if args.num_prompts is None:
            raise ValueError(f"--dataset {args.dataset} needs --num-prompts")
        if args.skip_tokenizer_init:
            raise ValueError(f"--dataset {args.dataset} holds text, which needs the tokenizer: "
                             "drop --skip-tokenizer-init")
    for flag, value in lengths.items():
        if value is not None and value < 1:
            raise ValueError(f"{flag} {value}: expected >= 1")


def benchmark_requests(args: argparse.Namespace, engine, conversations: list[dict] | None) -> list[SampleRequest]:
    """The random draw, or the dataset file's `conversations`."""
    if conversations is None:
        prompts = offline_prompts(args.num_prompts, args.input_len, engine.model_config.vocab_size)
        return [SampleRequest(p.tolist(), args.output_len) for p in prompts]
    return sharegpt_requests(conversations, args.num_prompts, engine.tokenizer, args.output_len,
                             engine.max_model_len, args.seed)


def _generate(engine, requests: list[SampleRequest], use_tqdm: bool, detokenize: bool) -> None:
    """Runs every request at once; raises unless each produced exactly its output length."""
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in requests]
    params = [fixed_length(r.expected_output_len, detokenize) for r in requests]
    outputs = engine.generate(prompts, params, use_tqdm=use_tqdm)
    wrong = [(i, len(o.outputs[0].token_ids), r.expected_output_len)
             for i, (o, r) in enumerate(zip(outputs, requests)) if len(o.outputs[0].token_ids) != r.expected_output_len]
    if wrong:
        raise RuntimeError(f"{len(wrong)} requests did not produce their output length; first "
                           f"(request, tokens, expected): {wrong[:3]}")


def format_table(result: dict) -> str:
    gemm = result["gemm"]
    lines = [
        centered(" Throughput Benchmark Result ", "="),
        row("Successful requests:", result["num_requests"]),
        row("Benchmark duration (s):", result["wall_s"]),
        row("Total input tokens:", result["total_input_tokens"]),
        row("Total generated tokens:", result["total_output_tokens"]),
        row("Request throughput (req/s):", result["requests_per_s"]),
        row("Output token throughput (tok/s):", result["output_tok_s"]),
        row("Total Token throughput (tok/s):", result["total_tok_s"]),
        row("Peak RSS (GB):", result["peak_rss_bytes"] / GB),
    ]
    if result["peak_gpu_memory_bytes"] is not None:
        lines.append(row("Peak GPU memory (GB):", result["peak_gpu_memory_bytes"] / GB))
    lines += [
        centered("Compute efficiency", "-"),
        row("Model FLOPs (GFLOP):", result["flops"] / 1e9),
        row(f"GEMM rate, {gemm['dtype']} {gemm['size']}³ (GFLOP/s):", gemm["flops_per_s"] / 1e9),
        row("Achieved (GFLOP/s):", result["flops"] / result["wall_s"] / 1e9),
        row("Compute efficiency (%):", 100.0 * result["compute_efficiency"]),
        "=" * WIDTH,
    ]
    return "\n".join(lines)


def run_throughput(args: argparse.Namespace) -> int:
    try:
        check_workload_flags(args)
        # A dataset file is read before the model loads, so that a bad one fails fast.
        conversations = None if args.dataset == "random" else read_conversations(Path(args.dataset))
        engine, load_s = build_engine(args)
        ready = time.time()
        requests = benchmark_requests(args, engine, conversations)
        first = requests[0]
        warmup = warmup_prompt(first.prompt_len, engine.model_config.vocab_size)[0].tolist()
        _generate(engine, [SampleRequest(warmup, first.expected_output_len)], False, not args.disable_detokenize)
        preemptions_before = engine.stats().num_preemptions
        start = time.perf_counter()
        _generate(engine, requests, not args.disable_tqdm, not args.disable_detokenize)
        wall = time.perf_counter() - start
    except (ValueError, RuntimeError) as e:
        raise SystemExit(f"kvserve bench throughput: {e}") from None
    gemm = measure_gemm_rate(engine.dtype, engine.device)
    lengths = [(r.prompt_len, r.expected_output_len) for r in requests]
    num_input, num_output = sum(p for p, _ in lengths), sum(o for _, o in lengths)
    flops = workload_flops(engine.model_config, lengths)
    result = run_settings(args, engine, load_s) | {
        "case": args.case,
        "dataset": args.dataset,
        "num_requests": len(requests),
        "input_len": args.input_len,
        "output_len": args.output_len,
        "detokenize": not args.disable_detokenize,
        "total_input_tokens": num_input,
        "total_output_tokens": num_output,
        "wall_s": wall,
        "requests_per_s": len(requests) / wall,
        "output_tok_s": num_output / wall,
        "total_tok_s": (num_input + num_output) / wall,
        "ready_unix_s": ready,
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_gpu_memory_bytes": peak_gpu_memory_bytes(engine.device),
        "num_preemptions": engine.stats().num_preemptions - preemptions_before,
        "flops": flops,
        "gemm": vars(gemm),
        "compute_efficiency": flops / wall / gemm.flops_per_s,
    }
    print(format_table(result))
    if args.result_json is not None:
        write_json(args.result_json, result)
    return 0
