"""compare.py's output: a markdown table per case (ratios against kvserve when it ran), a throughput
bar chart, and for serving cases TTFT/TPOT CDFs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

GB = 1e9


def _ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}×" if base else "–"


def _cell(value: float | None, fmt: str = ".1f") -> str:
    return "–" if value is None else format(value, fmt)


def markdown(title: str, header_lines: list[str], runs, serve: bool) -> str:
    ran = [r for r in runs if r.result]
    base = next((r.result["output_tok_s" if not serve else "output_throughput"] for r in ran if r.engine == "kvserve"), None)
    lines = [f"### {title}", "", *header_lines, ""]
    if serve:
        lines += [
            "| engine | version | req/s | output tok/s | vs kvserve | TTFT median / p99 ms | TPOT median / p99 ms "
            "| ITL median ms | failed | peak RSS GB | startup s | settings |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in ran:
            x = r.result
            lines.append(
                f"| {r.engine} | {r.version} | {x['request_throughput']:.2f} | {x['output_throughput']:.0f} "
                f"| {_ratio(x['output_throughput'], base)} | {x['median_ttft_ms']:.0f} / {x['p99_ttft_ms']:.0f} "
                f"| {x['median_tpot_ms']:.1f} / {x['p99_tpot_ms']:.1f} | {x['median_itl_ms']:.1f} | {x['failed']} "
                f"| {r.peak_rss_bytes / GB:.2f} | {_cell(r.startup_s)} | {r.note} |"
            )
    else:
        lines += [
            "| engine | version | output tok/s | vs kvserve | total tok/s | compute eff. | wall s | peak RSS GB "
            "| startup s | settings |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in ran:
            x = r.result
            efficiency = "–" if r.compute_efficiency is None else f"{100 * r.compute_efficiency:.0f}%"
            lines.append(
                f"| {r.engine} | {r.version} | {x['output_tok_s']:.0f} | {_ratio(x['output_tok_s'], base)} "
                f"| {x['total_tok_s']:.0f} | {efficiency} | {x['wall_s']:.2f} | {r.peak_rss_bytes / GB:.2f} "
                f"| {_cell(r.startup_s)} | {r.note} |"
            )
    lines += [f"- {r.engine}: {r.note}" for r in runs if not r.result]
    return "\n".join(lines) + "\n"


def throughput_plot(path: Path, title: str, runs, serve: bool) -> None:
    ran = [r for r in runs if r.result]
    values = [r.result["output_throughput" if serve else "output_tok_s"] for r in ran]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bars = ax.bar([r.engine for r in ran], values, color="tab:blue")
    ax.bar_label(bars, fmt="%.0f")
    ax.set_ylabel("output tokens/s")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _tpots(result: dict) -> list[float]:
    return [
        (e2el - ttft) / (n - 1) * 1000.0
        for e2el, ttft, n, err in zip(result["e2els"], result["ttfts"], result["output_lens"], result["errors"])
        if not err and n > 1
    ]


def latency_cdf_plot(path: Path, title: str, runs) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for r in (r for r in runs if r.result):
        ttfts = [t * 1000.0 for t, err in zip(r.result["ttfts"], r.result["errors"]) if not err]
        for ax, samples in zip(axes, (ttfts, _tpots(r.result))):
            xs = np.sort(samples)
            ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=r.engine)
    for ax, name in zip(axes, ("TTFT (ms)", "TPOT (ms)")):
        ax.set_xlabel(name)
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
