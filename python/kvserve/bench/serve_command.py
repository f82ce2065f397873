"""`kvserve bench serve`: the run that ties dataset, load generator, metrics and results together
(its flags are in kvserve.bench.cli)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

from kvserve.bench.cli import resolve_dataset
from kvserve.bench.datasets import SampleRequest, random_requests
from kvserve.bench.load_generator import Target, probe, run_load
from kvserve.bench.metrics import calculate_metrics, parse_goodput, parse_percentile_metrics, parse_percentiles
from kvserve.bench.results import format_table, result_dict, write_json
from kvserve.bench.sharegpt import read_conversations, sharegpt_requests
from kvserve.bench.text_prompts import text_requests
from kvserve.tokenizer import Tokenizer

# A dataset's conversations that fit this many tokens, prompt and reply, when the server does not
# say its max_model_len (vLLM's ShareGPT filter).
DEFAULT_DATASET_MAX_LEN = 2048


def _tokenizer_dir(args: argparse.Namespace) -> Path | None:
    if args.tokenizer is not None:
        path = Path(args.tokenizer)
        if not path.is_dir():
            raise ValueError(f"--tokenizer {args.tokenizer}: expected a Hugging Face model directory")
        return path
    return Path(args.model) if Path(args.model).is_dir() else None


def _vocab_size(tokenizer_dir: Path | None) -> int:
    config = tokenizer_dir / "config.json" if tokenizer_dir else None
    if config is None or not config.is_file():
        raise ValueError(
            f"no config.json in {tokenizer_dir}: pass --tokenizer DIR, the served model's directory, "
            "so that the random prompts draw from its vocab"
        )
    return int(json.loads(config.read_text())["vocab_size"])


def _tokenizer(tokenizer_dir: Path | None, why: str) -> Tokenizer:
    if tokenizer_dir is None or not (tokenizer_dir / "tokenizer.json").is_file():
        raise ValueError(f"no tokenizer.json in {tokenizer_dir}: {why} need --tokenizer DIR, the served model's directory")
    return Tokenizer.from_pretrained(tokenizer_dir)


# The endpoint each backend but the completions ones asks.
_BACKEND_ENDPOINTS = {"openai-chat": "/v1/chat/completions", "openai-embeddings": "/v1/embeddings"}


def check_flags(args: argparse.Namespace) -> None:
    """Joins vLLM's flag names into kvserve's (args.dataset, args.base_url); ValueError on a
    contradiction."""
    resolve_dataset(args)
    if args.base_url is not None and (args.host is not None or args.port is not None):
        raise ValueError(f"--base-url {args.base_url} with --host/--port: give one or the other")
    if args.base_url is None:
        args.base_url = f"http://{args.host or '127.0.0.1'}:{args.port or 8000}"
    chat = args.backend == "openai-chat"
    wanted = _BACKEND_ENDPOINTS.get(args.backend)
    if args.endpoint is None:
        args.endpoint = wanted or "/v1/completions"
    if wanted is not None and not args.endpoint.rstrip("/").endswith(wanted.removeprefix("/v1/")):
        raise ValueError(f"--backend {args.backend} asks {wanted}: --endpoint {args.endpoint} must end with "
                         f"{wanted.removeprefix('/v1/')}")
    if chat and args.prompt_format == "ids":
        raise ValueError("--backend openai-chat sends messages, which are text: --prompt-format ids does not apply")
    if not args.save_result and (args.result_dir is not None or args.result_filename is not None):
        raise ValueError("--result-dir/--result-filename name the file --save-result writes: add --save-result")
    if args.save_result and args.result_json is not None:
        raise ValueError(f"--result-json {args.result_json} with --save-result: give one or the other")


def result_path(args: argparse.Namespace, now: datetime) -> Path | None:
    """--result-json, or where vLLM's --save-result writes: RESULT_DIR/RESULT_FILENAME, by default
    BACKEND-RATEqps[-concurrencyN]-MODEL-DATE-TIME.json, as vLLM names it."""
    if not args.save_result:
        return args.result_json
    concurrency = f"-concurrency{args.max_concurrency}" if args.max_concurrency is not None else ""
    name = args.result_filename or (f"{args.backend}-{args.request_rate}qps{concurrency}-"
                                    f"{args.model.split('/')[-1]}-{now.strftime('%Y%m%d-%H%M%S')}.json")
    return args.result_dir / name if args.result_dir is not None else Path(name)


def _server_max_model_len(args: argparse.Namespace) -> int:
    """The served model's max_model_len as /v1/models gives it (kvserve and vLLM do), else vLLM's
    ShareGPT limit."""
    request = urllib.request.Request(args.base_url.rstrip("/") + "/v1/models")
    if args.api_key:
        request.add_header("Authorization", f"Bearer {args.api_key}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            models = json.loads(response.read())["data"]
    except (OSError, ValueError, KeyError, TypeError):  # urllib's errors are OSErrors
        return DEFAULT_DATASET_MAX_LEN
    lengths = [m.get("max_model_len") for m in models if isinstance(m, dict) and m.get("id") == args.model]
    return lengths[0] if lengths and isinstance(lengths[0], int) else DEFAULT_DATASET_MAX_LEN


def _requests(args: argparse.Namespace, tokenizer_dir: Path | None) -> list[SampleRequest]:
    """The random draw, or the dataset file's first usable conversations."""
    if args.dataset == "random":
        return random_requests(args.num_prompts, args.random_input_len, args.random_output_len,
                               args.random_range_ratio, _vocab_size(tokenizer_dir), args.seed,
                               args.random_prefix_len)
    conversations = read_conversations(Path(args.dataset))
    tokenizer = _tokenizer(tokenizer_dir, f"--dataset {args.dataset} holds text, whose prompts")
    return sharegpt_requests(conversations, args.num_prompts, tokenizer, None, _server_max_model_len(args), args.seed)


def _choose_target(args: argparse.Namespace, tokenizer_dir: Path | None,
                   requests: list[SampleRequest]) -> tuple[Target, list[SampleRequest]]:
    """Probes the server with the first request: token ids first (exact prompt lengths), then text
    (of the length the server sees: kvserve.bench.text_prompts). Returns the target and the
    requests to send it."""
    url = args.base_url.rstrip("/") + args.endpoint
    chat = args.backend == "openai-chat"
    formats = ["text"] if chat else {"ids": ["ids"], "text": ["text"], "auto": ["ids", "text"]}[args.prompt_format]
    errors = []
    for fmt in formats:
        if fmt == "text":
            requests = text_requests(requests, _tokenizer(tokenizer_dir, "text prompts"), args.seed)
        target = Target(url, args.model, args.ignore_eos, args.api_key, send_text=fmt == "text", chat=chat,
                        embeddings=args.backend == "openai-embeddings")
        record = asyncio.run(probe(target, requests[0]))
        if record.success:
            return target, requests
        errors.append(f"as {fmt}: {record.error}")
    raise RuntimeError(f"the test request to {url} failed ({'; '.join(errors)})")


def run_serve(args: argparse.Namespace) -> int:
    try:
        check_flags(args)
        percentiles = parse_percentiles(args.metric_percentiles)
        percentile_metrics = parse_percentile_metrics(args.percentile_metrics)
        goodput = parse_goodput(args.goodput)
        tokenizer_dir = _tokenizer_dir(args)
        requests = _requests(args, tokenizer_dir)
        target, requests = _choose_target(args, tokenizer_dir, requests)
        if args.lora_modules:  # vLLM's: each request names one of the adapters, drawn at random
            rng = random.Random(args.seed)
            requests = [dataclasses.replace(r, model=rng.choice(args.lora_modules)) for r in requests]
        records, duration = asyncio.run(run_load(
            target, requests, args.request_rate, args.burstiness, args.max_concurrency, args.seed,
            show_progress=not args.disable_tqdm,
        ))
    except (ValueError, RuntimeError) as e:
        raise SystemExit(f"kvserve bench serve: {e}") from None
    metrics = calculate_metrics(records, duration, goodput, percentiles)
    embeddings = args.backend == "openai-embeddings"
    print(format_table(metrics, args.max_concurrency, ("e2el",) if embeddings else percentile_metrics,
                       generates=not embeddings))
    now = datetime.now(timezone.utc)
    path = result_path(args, now)
    if path is not None:
        settings = {
            "date": now.isoformat(timespec="seconds"),
            "backend": args.backend,
            "base_url": args.base_url,
            "endpoint": args.endpoint,
            "model_id": args.model,
            "tokenizer_id": args.tokenizer if args.tokenizer is not None else args.model,
            "num_prompts": args.num_prompts,
            "dataset": args.dataset,
        }
        if args.dataset == "random":
            settings |= {
                "random_input_len": args.random_input_len,
                "random_output_len": args.random_output_len,
                "random_range_ratio": args.random_range_ratio,
                "random_prefix_len": args.random_prefix_len,
            }
        settings |= {
            "request_rate": args.request_rate if args.request_rate != float("inf") else "inf",
            "burstiness": args.burstiness,
            "max_concurrency": args.max_concurrency,
            "seed": args.seed,
            "ignore_eos": args.ignore_eos,
            "prompt_format": target.prompt_format,
            "goodput_slos_ms": {k: v * 1000.0 for k, v in goodput.items()},
        }
        write_json(path, result_dict(metrics, records, settings))
    return 0
