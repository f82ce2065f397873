"""The server's periodic line of what the engine did, as vLLM logs it (`--disable-log-stats` turns it off):

    Avg prompt throughput: 812.4 tokens/s, Avg generation throughput: 95.1 tokens/s, Running: 4 reqs,
    Waiting: 0 reqs, KV cache usage: 3.1%, Prefix cache hit rate: 42.0%

every KVSERVE_LOG_STATS_INTERVAL seconds (default 10, as vLLM's VLLM_LOG_STATS_INTERVAL), at INFO
while the engine works and for the interval after, at DEBUG while it idles. The throughputs and the
hit rate are the interval's; the rest is the engine as it is when the line is written. An engine
that speculates adds vLLM's line for the interval's drafts, when it had any:

    SpecDecoding metrics: Mean acceptance length: 2.40, Accepted: 420 tokens, Drafted: 1200 tokens,
    Per-position acceptance rate: 0.620, 0.380, 0.200, Avg Draft acceptance rate: 35.0%

(the mean acceptance length counts the token every row with drafts lands besides them).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from kvserve.server.async_engine import AsyncEngine
from kvserve.server.metrics import ServerMetrics

logger = logging.getLogger("kvserve.server")

DEFAULT_INTERVAL_S = 10.0


def log_stats_interval() -> float:
    """KVSERVE_LOG_STATS_INTERVAL in seconds (ValueError for anything but a number > 0)."""
    value = os.environ.get("KVSERVE_LOG_STATS_INTERVAL")
    if value is None:
        return DEFAULT_INTERVAL_S
    try:
        interval = float(value)
    except ValueError:
        interval = 0.0
    if not interval > 0:
        raise ValueError(f"KVSERVE_LOG_STATS_INTERVAL must be a number of seconds > 0, got {value!r}")
    return interval


class StatsLogger:
    def __init__(self, engine: AsyncEngine, metrics: ServerMetrics, interval_s: float):
        self._engine = engine
        self._metrics = metrics
        self.interval_s = interval_s
        self._last = self._totals()
        self._was_busy = False
        self._drafts_seen = self._draft_totals()

    def _totals(self) -> tuple[float, int, int, int, int]:
        snapshot = self._engine.snapshot
        return (time.monotonic(), self._metrics.prompt_tokens_total, self._metrics.generation_tokens_total,
                snapshot.prefix_cache_queries, snapshot.prefix_cache_hits)

    def line(self) -> tuple[str, bool]:
        """The interval's line since the last call, and whether the engine worked in it."""
        now = self._totals()
        (start, prompt, generated, queries, hits), self._last = self._last, now
        seconds = max(now[0] - start, 1e-9)
        snapshot, waiting = self._engine.snapshot, self._engine.num_waiting
        new_queries = now[3] - queries
        hit_rate = 100 * (now[4] - hits) / new_queries if new_queries else 0.0
        busy = now[1] > prompt or now[2] > generated or snapshot.num_running > 0 or waiting > 0
        text = (f"Avg prompt throughput: {(now[1] - prompt) / seconds:.1f} tokens/s, "
                f"Avg generation throughput: {(now[2] - generated) / seconds:.1f} tokens/s, "
                f"Running: {snapshot.num_running} reqs, Waiting: {waiting} reqs, "
                f"KV cache usage: {100 * snapshot.kv_cache_usage:.1f}%, Prefix cache hit rate: {hit_rate:.1f}%")
        return text, busy

    def _draft_totals(self) -> tuple[int, int, int, tuple[int, ...]]:
        snapshot = self._engine.snapshot
        return (snapshot.num_drafts, snapshot.num_draft_tokens, snapshot.num_accepted_tokens,
                snapshot.num_accepted_tokens_per_pos)

    def spec_decode_line(self) -> str | None:
        """The interval's drafts since the last call; None when there were none."""
        now = self._draft_totals()
        (drafts, draft_tokens, accepted, per_pos), self._drafts_seen = self._drafts_seen, now
        drafts, draft_tokens, accepted = now[0] - drafts, now[1] - draft_tokens, now[2] - accepted
        if not drafts:
            return None
        rates = ", ".join(f"{(a - b) / drafts:.3f}" for a, b in zip(now[3], per_pos or (0,) * len(now[3])))
        return (f"SpecDecoding metrics: Mean acceptance length: {1 + accepted / drafts:.2f}, "
                f"Accepted: {accepted} tokens, Drafted: {draft_tokens} tokens, "
                f"Per-position acceptance rate: {rates}, "
                f"Avg Draft acceptance rate: {100 * accepted / max(draft_tokens, 1):.1f}%")

    async def run(self) -> None:
        """Logs a line every interval until cancelled."""
        while True:
            await asyncio.sleep(self.interval_s)
            text, busy = self.line()
            logger.log(logging.INFO if busy or self._was_busy else logging.DEBUG, text)
            spec_decode = self.spec_decode_line()
            if spec_decode is not None:
                logger.info(spec_decode)
            self._was_busy = busy
