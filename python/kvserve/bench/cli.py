"""The `kvserve bench` command group: every subcommand's flags (vLLM's names and meanings). Each run
imports its own module only when it starts."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from kvserve.bench.presets import MODEL_PRESETS
from kvserve.engine_args import add_engine_arguments


DATASET_NAMES = ("random", "sharegpt")
BACKENDS = ("openai", "vllm", "openai-chat", "openai-embeddings")  # vLLM's


def add_dataset_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """kvserve's --dataset, or vLLM's --dataset-name and --dataset-path (resolve_dataset joins them)."""
    parser.add_argument("--dataset", default=None,
                        help="'random' (default) or a ShareGPT-like .json/.jsonl file: its prompts, and its "
                        "replies' lengths as output lengths (needs a tokenizer)")
    parser.add_argument("--dataset-name", choices=DATASET_NAMES, default=None,
                        help="vLLM's name: random, or sharegpt with --dataset-path FILE (the same as --dataset FILE)")
    parser.add_argument("--dataset-path", default=None, help="vLLM's name: the ShareGPT file of --dataset-name sharegpt")


def resolve_dataset(args: argparse.Namespace) -> None:
    """Sets args.dataset to 'random' or the dataset file, from --dataset or vLLM's
    --dataset-name/--dataset-path; ValueError on a contradiction."""
    name, path = args.dataset_name, args.dataset_path
    if args.dataset is not None:
        if name is not None or path is not None:
            raise ValueError(f"--dataset {args.dataset} with --dataset-name/--dataset-path: give one or the other")
        return
    if name == "sharegpt" and path is None:
        raise ValueError("--dataset-name sharegpt needs --dataset-path FILE")
    if name in (None, "random") and path is not None:
        raise ValueError(f"--dataset-path {path}: the random dataset reads no file; add --dataset-name sharegpt")
    args.dataset = path if name == "sharegpt" else "random"


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", default=None,
                        help="server root, without /v1 (default: http://HOST:PORT)")
    parser.add_argument("--host", default=None, help="vLLM's: the server's host, when no --base-url (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="vLLM's: the server's port, when no --base-url (default 8000)")
    parser.add_argument("--endpoint", default=None,
                        help="default: /v1/completions, or the --backend's (/v1/chat/completions, /v1/embeddings)")
    parser.add_argument("--backend", choices=BACKENDS, default="openai",
                        help="vLLM's: openai and vllm stream /v1/completions; openai-chat streams "
                        "/v1/chat/completions, each prompt's text as one user message; openai-embeddings "
                        "asks /v1/embeddings (a pooling server) for each prompt's vector")
    parser.add_argument("--model", required=True, help="the model name the server serves")
    parser.add_argument("--lora-modules", nargs="+", default=[], metavar="NAME",
                        help="vLLM's: LoRA adapters the server serves; each request names one, drawn at random")
    parser.add_argument(
        "--tokenizer",
        help="HF model dir whose vocab the random prompts draw from, and that turns them into text for "
        "servers that do not take token ids (default: --model, when that is a directory)",
    )
    add_dataset_arguments(parser)
    parser.add_argument("--num-prompts", type=int, default=1000)
    parser.add_argument("--random-input-len", type=int, default=1024)
    parser.add_argument("--random-output-len", type=int, default=128)
    parser.add_argument(
        "--random-range-ratio", type=float, default=0.0,
        help="lengths uniform in [L*(1-r), L*(1+r)], 0 <= r < 1",
    )
    parser.add_argument("--random-prefix-len", type=int, default=0, metavar="N",
                        help="vLLM's: every prompt opens with the same N random tokens, then its own "
                        "--random-input-len (the prefix cache's benchmark; default 0)")
    parser.add_argument("--request-rate", type=float, default=float("inf"), help="requests/s, or inf")
    parser.add_argument(
        "--burstiness", type=float, default=1.0,
        help="gamma shape of the gaps between requests: 1 is Poisson, lower is burstier",
    )
    parser.add_argument("--max-concurrency", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--goodput", nargs="+", default=[], metavar="NAME:MS", help="SLOs: ttft:MS tpot:MS e2el:MS")
    # kvserve's default keeps p90 beside vLLM's p99 (bench/README.md's tables and compare.py read both).
    parser.add_argument("--metric-percentiles", default="90,99",
                        help="comma-separated, e.g. 50,90,99 (default 90,99; vLLM's is 99)")
    parser.add_argument("--percentile-metrics", default="ttft,tpot,itl",
                        help="which of ttft,tpot,itl,e2el the printed report shows (vLLM's default: "
                        "ttft,tpot,itl); the result JSON keeps all four")
    # On by default, unlike vLLM: every documented serving figure is of exactly the asked lengths
    # (random-weight models may sample EOS at any step).
    parser.add_argument(
        "--ignore-eos", action=argparse.BooleanOptionalAction, default=True,
        help="generate exactly the requested output length (default: on; vLLM's: off)",
    )
    parser.add_argument(
        "--prompt-format", choices=("auto", "ids", "text"), default="auto",
        help="send prompts as token-id lists or text; auto: ids when the server accepts them",
    )
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"))
    parser.add_argument("--result-json", type=Path, help="write the result (metrics and per-request timelines) here")
    parser.add_argument("--save-result", action="store_true",
                        help="vLLM's: write the result JSON to --result-dir/--result-filename (default name: "
                        "BACKEND-RATEqps[-concurrencyN]-MODEL-YYYYmmdd-HHMMSS.json)")
    parser.add_argument("--result-dir", type=Path, default=None, help="vLLM's: where --save-result writes")
    parser.add_argument("--result-filename", default=None, help="vLLM's: the file name --save-result writes")
    parser.add_argument("--disable-tqdm", action="store_true")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model or --preset, and the engine's flags."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", help="a Hugging Face directory, a .gguf file or Org/Name "
                                       "(default: kvserve's default model)")
    which.add_argument("--preset", choices=list(MODEL_PRESETS),
                       help="a WORKLOAD.md model preset (random weights, written to the cache on first use)")
    add_engine_arguments(parser)


def add_throughput_arguments(parser: argparse.ArgumentParser) -> None:
    workload = parser.add_argument_group("workload")
    workload.add_argument("--case", help="a WORKLOAD.md case, offline-N-IN-OUT: sets the three lengths below")
    add_dataset_arguments(workload)
    workload.add_argument("--num-prompts", type=int, help="requests, all submitted at once")
    workload.add_argument("--input-len", type=int, help="prompt tokens per request (random dataset)")
    workload.add_argument("--output-len", type=int,
                          help="output tokens per request, EOS ignored (a dataset file: default its replies' lengths)")
    add_model_arguments(parser)
    parser.add_argument("--disable-detokenize", action="store_true",
                        help="vLLM's: the outputs' text is not made (SamplingParams.detokenize=False), so its "
                        "time is not measured")
    parser.add_argument("--result-json", "--output-json", type=Path, help="write the result here")
    parser.add_argument("--disable-tqdm", action="store_true")


def add_latency_arguments(parser: argparse.ArgumentParser) -> None:
    workload = parser.add_argument_group("workload")
    workload.add_argument("--batch-size", type=int, default=8, help="requests in the batch")
    workload.add_argument("--input-len", type=int, default=32, help="prompt tokens per request")
    workload.add_argument("--output-len", type=int, default=128, help="output tokens per request, EOS ignored")
    workload.add_argument("--num-iters-warmup", type=int, default=1, help="untimed batches first")
    workload.add_argument("--num-iters", type=int, default=5, help="timed batches")
    add_model_arguments(parser)
    parser.add_argument("--metric-percentiles", default="90,99", help="comma-separated, e.g. 50,90,99")
    parser.add_argument("--result-json", "--output-json", type=Path,
                        help="write the result (with every step's time) here")
    parser.add_argument("--disable-tqdm", action="store_true")


def _run_serve(args: argparse.Namespace) -> int:
    from kvserve.bench.serve_command import run_serve

    return run_serve(args)


def _run_throughput(args: argparse.Namespace) -> int:
    from kvserve.bench.throughput_command import run_throughput

    return run_throughput(args)


def _run_latency(args: argparse.Namespace) -> int:
    from kvserve.bench.latency_command import run_latency

    return run_latency(args)


def add_bench_parser(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="benchmark an engine or server, measured the way `vllm bench` does")
    subcommands = bench.add_subparsers(dest="bench_command", metavar="BENCH_COMMAND", required=True)
    serve = subcommands.add_parser(
        "serve", help="load-test any OpenAI-compatible server: TTFT, TPOT, ITL, E2EL, throughput"
    )
    add_serve_arguments(serve)
    serve.set_defaults(func=_run_serve)
    throughput = subcommands.add_parser(
        "throughput", help="offline throughput: every request at once, fixed lengths (WORKLOAD.md's offline cases)"
    )
    add_throughput_arguments(throughput)
    throughput.set_defaults(func=_run_throughput)
    latency = subcommands.add_parser(
        "latency", help="one fixed batch step by step: prefill time, decode ms/step, decode tok/s"
    )
    add_latency_arguments(latency)
    latency.set_defaults(func=_run_latency)
