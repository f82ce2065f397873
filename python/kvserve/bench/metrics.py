"""Serving metrics, defined exactly as `vllm bench serve` defines them, from per-request timelines.

One request, as the load generator sees it (times from its send):

    send ──ttft──▶ chunk 1 ──itl[0]──▶ chunk 2 ──itl[1]──▶ ... chunk k      (e2el = send → chunk k)

- TTFT: until the first chunk with non-empty `choices`.
- ITL: the gaps between consecutive chunks, pooled over all requests.
- TPOT of a request: (E2EL − TTFT) / (output tokens − 1), for requests with more than one token.
- Throughputs divide by the duration from the first send to the last finish.
- Failed requests are counted and excluded from every latency and token figure.
Empty samples give 0, as in vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

GOODPUT_METRICS = ("ttft", "tpot", "e2el")
LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el")  # in the order reports show them


@dataclass
class RequestRecord:
    """What happened to one request. Times in seconds."""

    prompt_len: int
    success: bool = False
    output_tokens: int = 0
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    latency: float = 0.0  # E2EL
    error: str = ""


@dataclass(frozen=True)
class LatencyStats:
    """Milliseconds."""

    mean: float
    median: float
    std: float
    percentiles: dict[float, float]

    @classmethod
    def of(cls, seconds: list[float], percentiles: tuple[float, ...]) -> LatencyStats:
        ms = np.asarray(seconds if seconds else [0.0], dtype=np.float64) * 1000.0
        return cls(
            mean=float(ms.mean()),
            median=float(np.median(ms)),
            std=float(ms.std()),
            percentiles={p: float(np.percentile(ms, p)) for p in percentiles},
        )


@dataclass(frozen=True)
class BenchmarkMetrics:
    completed: int
    failed: int
    total_input: int
    total_output: int
    duration_s: float
    request_throughput: float
    request_goodput: float | None  # None when no --goodput was given
    output_throughput: float
    total_token_throughput: float
    ttft: LatencyStats
    tpot: LatencyStats
    itl: LatencyStats
    e2el: LatencyStats


def parse_goodput(items: list[str]) -> dict[str, float]:
    """["ttft:500", "tpot:50"] → {"ttft": 0.5, "tpot": 0.05}: SLOs given in ms, kept in seconds."""
    slos = {}
    for item in items:
        name, sep, value = item.partition(":")
        if not sep or name not in GOODPUT_METRICS:
            raise ValueError(f"bad goodput {item!r}: expected NAME:MS with NAME one of {', '.join(GOODPUT_METRICS)}")
        try:
            ms = float(value)
        except ValueError:
            ms = -1.0
        if ms < 0:
            raise ValueError(f"bad goodput {item!r}: expected a non-negative number of milliseconds")
        slos[name] = ms / 1000.0
    return slos


def parse_percentiles(text: str) -> tuple[float, ...]:
    """--metric-percentiles "90,99" → (90.0, 99.0)."""
    try:
        values = tuple(float(p) for p in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(0 <= p <= 100 for p in values):
        raise ValueError(f"--metric-percentiles {text!r}: expected comma-separated numbers in [0, 100]")
    return values


def parse_percentile_metrics(text: str) -> tuple[str, ...]:
    """--percentile-metrics "itl,ttft" → ("ttft", "itl"): known names, in the report's order."""
    names = [name.strip() for name in text.split(",")]
    unknown = [name for name in names if name not in LATENCY_METRICS]
    if unknown or not text.strip():
        raise ValueError(f"--percentile-metrics {text!r}: expected comma-separated names from "
                         f"{','.join(LATENCY_METRICS)}")
    return tuple(name for name in LATENCY_METRICS if name in names)


def calculate_metrics(
    records: list[RequestRecord],
    duration_s: float,
    goodput: dict[str, float] | None = None,
    percentiles: tuple[float, ...] = (90.0, 99.0),
) -> BenchmarkMetrics:
    if duration_s <= 0:
        raise ValueError(f"duration_s={duration_s}: expected > 0")
    done = [r for r in records if r.success]
    ttfts = [r.ttft for r in done]
    e2els = [r.latency for r in done]
    itls = [gap for r in done for gap in r.itl]
    # A request of one token has no TPOT; it still counts (as 0) against a TPOT goodput SLO.
    tpot_all = [(r.latency - r.ttft) / (r.output_tokens - 1) if r.output_tokens > 1 else 0.0 for r in done]
    tpots = [t for t, r in zip(tpot_all, done) if r.output_tokens > 1]
    total_input = sum(r.prompt_len for r in done)
    total_output = sum(r.output_tokens for r in done)
    request_goodput = None
    if goodput:
        per_request = {"ttft": ttfts, "tpot": tpot_all, "e2el": e2els}
        good = sum(
            all(per_request[name][i] <= slo for name, slo in goodput.items()) for i in range(len(done))
        )
        request_goodput = good / duration_s
    return BenchmarkMetrics(
        completed=len(done),
        failed=len(records) - len(done),
        total_input=total_input,
        total_output=total_output,
        duration_s=duration_s,
        request_throughput=len(done) / duration_s,
        request_goodput=request_goodput,
        output_throughput=total_output / duration_s,
        total_token_throughput=(total_input + total_output) / duration_s,
        ttft=LatencyStats.of(ttfts, percentiles),
        tpot=LatencyStats.of(tpots, percentiles),
        itl=LatencyStats.of(itls, percentiles),
        e2el=LatencyStats.of(e2els, percentiles),
    )
