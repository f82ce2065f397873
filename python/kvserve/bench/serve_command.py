"""`kvserve bench serve`: the run that ties dataset, load generator, metrics and results together
(its flags are in kvserve.bench.cli)."""

from __future__ import annotations

import argparse
import asyncio
import json
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

from kvserve.bench.datasets import SampleRequest, random_requests
from kvserve.bench.load_generator import Target, probe, run_load
from kvserve.bench.metrics import calculate_metrics, parse_goodput, parse_percentiles
from kvserve.bench.results import format_table, result_dict, write_json
from kvserve.bench.sharegpt import read_conversations, sharegpt_requests
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


def _text_decoder(tokenizer_dir: Path | None):
    path = tokenizer_dir / "tokenizer.json" if tokenizer_dir else None
    if path is None or not path.is_file():
        raise ValueError(f"no tokenizer.json in {tokenizer_dir}: text prompts need --tokenizer DIR")
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=False)


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
                               args.random_range_ratio, _vocab_size(tokenizer_dir), args.seed)
    conversations = read_conversations(Path(args.dataset))
    if tokenizer_dir is None or not (tokenizer_dir / "tokenizer.json").is_file():
        raise ValueError(f"--dataset {args.dataset} holds text: pass --tokenizer DIR, the served model's directory")
    return sharegpt_requests(conversations, args.num_prompts, Tokenizer.from_pretrained(tokenizer_dir), None,
                             _server_max_model_len(args))


def _choose_target(args: argparse.Namespace, tokenizer_dir: Path | None, first: SampleRequest) -> Target:
    """Probes the server with the first request: token ids first (exact prompt lengths), then text."""
    url = args.base_url.rstrip("/") + args.endpoint
    ids = Target(url, args.model, args.ignore_eos, args.api_key)
    formats = {"ids": ["ids"], "text": ["text"], "auto": ["ids", "text"]}[args.prompt_format]
    errors = []
    for fmt in formats:
        target = ids if fmt == "ids" else Target(url, args.model, args.ignore_eos, args.api_key, _text_decoder(tokenizer_dir))
        record = asyncio.run(probe(target, first))
        if record.success:
            return target
        errors.append(f"as {fmt}: {record.error}")
    raise RuntimeError(f"the test request to {url} failed ({'; '.join(errors)})")


def run_serve(args: argparse.Namespace) -> int:
    try:
        percentiles = parse_percentiles(args.metric_percentiles)
        goodput = parse_goodput(args.goodput)
        tokenizer_dir = _tokenizer_dir(args)
        requests = _requests(args, tokenizer_dir)
        target = _choose_target(args, tokenizer_dir, requests[0])
        records, duration = asyncio.run(run_load(
            target, requests, args.request_rate, args.burstiness, args.max_concurrency, args.seed,
            show_progress=not args.disable_tqdm,
        ))
    except (ValueError, RuntimeError) as e:
        raise SystemExit(f"kvserve bench serve: {e}") from None
    metrics = calculate_metrics(records, duration, goodput, percentiles)
    print(format_table(metrics, args.max_concurrency))
    if args.result_json is not None:
        settings = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "base_url": args.base_url,
            "model_id": args.model,
            "num_prompts": args.num_prompts,
            "dataset": args.dataset,
            "random_input_len": args.random_input_len,
            "random_output_len": args.random_output_len,
            "random_range_ratio": args.random_range_ratio,
            "request_rate": args.request_rate if args.request_rate != float("inf") else "inf",
            "burstiness": args.burstiness,
            "max_concurrency": args.max_concurrency,
            "seed": args.seed,
            "prompt_format": "ids" if target.decode is None else "text",
            "goodput_slos_ms": {k: v * 1000.0 for k, v in goodput.items()},
        }
        write_json(args.result_json, result_dict(metrics, records, settings))
    return 0
