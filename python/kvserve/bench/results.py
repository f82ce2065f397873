"""How benchmarks are reported: printed tables in vLLM's layout (so that results read the same side
by side), and JSON results. The serving result keeps vLLM's key names, plus the per-request
timelines that compare.py plots."""

from __future__ import annotations

import json
from pathlib import Path

from kvserve.bench.metrics import LATENCY_METRICS, BenchmarkMetrics, LatencyStats, RequestRecord

WIDTH = 50
_LATENCY_SECTIONS = (
    ("ttft", "TTFT", "Time to First Token"),
    ("tpot", "TPOT", "Time per Output Token (excl. 1st token)"),
    ("itl", "ITL", "Inter-token Latency"),
    ("e2el", "E2EL", "End-to-end Latency"),
)


def _p_word(p: float) -> str:
    return str(int(p)) if int(p) == p else str(p)


def row(label: str, value: float | int | str) -> str:
    """One line of a result table: the label, then the value from column 41 (floats with 2 decimals)."""
    cell = f"{value:<10.2f}" if isinstance(value, float) else f"{value:<10}"
    return f"{label:<40} {cell}".rstrip()


def centered(text: str, fill: str) -> str:
    return f"{text:{fill}^{WIDTH}}"


def latency_rows(heading: str, short: str, stats: LatencyStats) -> list[str]:
    """A table section: mean, median and each percentile of one latency, in ms."""
    return [
        centered(heading, "-"),
        row(f"Mean {short} (ms):", stats.mean),
        row(f"Median {short} (ms):", stats.median),
        *(row(f"P{_p_word(p)} {short} (ms):", v) for p, v in stats.percentiles.items()),
    ]


def latency_fields(key: str, stats: LatencyStats) -> dict[str, float]:
    """JSON fields of one latency, vLLM's names: mean_KEY_ms, median_KEY_ms, std_KEY_ms, pP_KEY_ms."""
    fields = {f"mean_{key}_ms": stats.mean, f"median_{key}_ms": stats.median, f"std_{key}_ms": stats.std}
    return fields | {f"p{_p_word(p)}_{key}_ms": v for p, v in stats.percentiles.items()}


def format_table(metrics: BenchmarkMetrics, max_concurrency: int | None = None,
                 percentile_metrics: tuple[str, ...] = LATENCY_METRICS, generates: bool = True) -> str:
    """vLLM's table; like vLLM's, it shows the latency sections of `percentile_metrics` only, and
    no generated tokens where the requests generate none (embeddings)."""
    lines = [centered(" Serving Benchmark Result ", "="), row("Successful requests:", metrics.completed)]
    if metrics.failed:
        lines.append(row("Failed requests:", metrics.failed))
    if max_concurrency is not None:
        lines.append(row("Maximum request concurrency:", max_concurrency))
    lines += [row("Benchmark duration (s):", metrics.duration_s), row("Total input tokens:", metrics.total_input)]
    if generates:
        lines.append(row("Total generated tokens:", metrics.total_output))
    lines.append(row("Request throughput (req/s):", metrics.request_throughput))
    if metrics.request_goodput is not None:
        lines.append(row("Request goodput (req/s):", metrics.request_goodput))
    if generates:
        lines.append(row("Output token throughput (tok/s):", metrics.output_throughput))
    lines.append(row("Total Token throughput (tok/s):", metrics.total_token_throughput))
    for key, short, heading in _LATENCY_SECTIONS:
        if key in percentile_metrics:
            lines += latency_rows(heading, short, getattr(metrics, key))
    lines.append("=" * WIDTH)
    return "\n".join(lines)


def result_dict(metrics: BenchmarkMetrics, records: list[RequestRecord], settings: dict) -> dict:
    """`settings` (model, rates, lengths, date...) first, then the metrics, then per-request lists
    in request order (failed requests: 0 tokens and latencies, and their error)."""
    result = dict(settings)
    result |= {
        "duration": metrics.duration_s,
        "completed": metrics.completed,
        "failed": metrics.failed,
        "total_input_tokens": metrics.total_input,
        "total_output_tokens": metrics.total_output,
        "request_throughput": metrics.request_throughput,
        "request_goodput": metrics.request_goodput,
        "output_throughput": metrics.output_throughput,
        "total_token_throughput": metrics.total_token_throughput,
    }
    for key, _, _ in _LATENCY_SECTIONS:
        result |= latency_fields(key, getattr(metrics, key))
    result |= {
        "input_lens": [r.prompt_len for r in records],
        "output_lens": [r.output_tokens for r in records],
        "ttfts": [r.ttft for r in records],
        "e2els": [r.latency for r in records],
        "itls": [r.itl for r in records],
        "errors": [r.error for r in records],
    }
    return result


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
