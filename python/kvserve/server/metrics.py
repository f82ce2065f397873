"""Prometheus metrics at GET /metrics, named after vLLM's `vllm:*` (so its dashboards carry over):

    kvserve:num_requests_running / num_requests_waiting / kv_cache_usage_perc     gauges
    kvserve:prefix_cache_queries / prefix_cache_hits (tokens), num_preemptions   counters
    kvserve:prompt_tokens / generation_tokens                                     counters
    kvserve:request_success{finished_reason=stop|length|abort}                   counter
        (one per finished sequence; an aborted request counts once)
    kvserve:time_to_first_token_seconds, inter_token_latency_seconds,
    kvserve:e2e_request_latency_seconds, request_queue_time_seconds               histograms
    per finished request: kvserve:request_prompt_tokens, request_generation_tokens,
    request_prefill_time_seconds (first scheduled -> first token), request_decode_time_seconds
    (first -> last token), request_inference_time_seconds (first scheduled -> finished),
    request_time_per_output_token_seconds (decode time / tokens after the first),
    request_max_num_generation_tokens (its longest sample's)                        histograms
    per added request: kvserve:request_params_n, request_params_max_tokens          histograms
    kvserve:iteration_tokens_total (the tokens of each engine step)                  histogram
    kvserve:cache_config_info{block_size, cache_dtype, enable_prefix_caching, num_gpu_blocks}  gauge
        (vLLM's labels; num_gpu_blocks counts the KV cache's blocks on the CPU too; value 1)
    kvserve:lora_requests_info{max_lora, running_lora_adapters, waiting_lora_adapters}   gauge
        (with --enable-lora: the adapters of running and waiting requests, comma-separated, as
        vLLM's, which LoRA-aware routers read; its value is the time of the scrape)
    kvserve:spec_decode_num_drafts / num_draft_tokens / num_accepted_tokens,
    kvserve:spec_decode_num_accepted_tokens_per_pos{position}                    counters
        (with --speculative-config: rows that verified drafts, their drafts, the drafts accepted)

Token and latency metrics are recorded on the engine thread as each step ends (StepObserver);
the engine's state is read when /metrics is scraped. Each app has its own registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest)

from kvserve.outputs import PoolingRequestOutput, RequestOutput
from kvserve.pooling import PoolingParams
from kvserve.sampling_params import SamplingParams
from kvserve.server.async_engine import AsyncEngine, StepObserver

# Seconds; CPU inter-token latencies of small models reach down to a millisecond.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0,
                    10.0, 20.0, 40.0, 80.0, 160.0, 640.0)
_REQUEST_BUCKETS = (0.1, 0.3, 0.5, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 240.0, 480.0, 960.0,
                    1920.0, 7680.0)

router = APIRouter()


def _token_buckets(max_model_len: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to max_model_len (vLLM's buckets for token counts)."""
    buckets, scale = [], 1
    while True:
        for mantissa in (1, 2, 5):
            if mantissa * scale > max_model_len:
                return buckets
            buckets.append(mantissa * scale)
        scale *= 10


# vLLM's buckets for the number of samples a request asks for.
_N_BUCKETS = (1, 2, 5, 10, 20)
# vLLM's buckets for a step's tokens, up to the scheduler's budget.
_STEP_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


@dataclass
class SpecDecodeCounters:
    """vLLM's spec_decode counters, for an engine that speculates."""

    num_drafts: object
    num_draft_tokens: object
    num_accepted_tokens: object
    num_accepted_tokens_per_pos: list

    def totals(self, snapshot) -> list[tuple[object, int]]:
        """Each counter with the engine's total it follows."""
        return ([(self.num_drafts, snapshot.num_drafts), (self.num_draft_tokens, snapshot.num_draft_tokens),
                 (self.num_accepted_tokens, snapshot.num_accepted_tokens)]
                + list(zip(self.num_accepted_tokens_per_pos, snapshot.num_accepted_tokens_per_pos)))


class ServerMetrics(StepObserver):
    def __init__(self, model_name: str, max_model_len: int, max_loras: int | None = None,
                 max_num_batched_tokens: int = _STEP_TOKEN_BUCKETS[-1], cache_config: dict[str, str] | None = None,
                 num_speculative_tokens: int = 0):
        """max_loras: the engine's (enable_lora), None without LoRA (no lora_requests_info).
        cache_config: cache_config_info's labels (none without). num_speculative_tokens: the engine's
        (speculative_config), 0 without speculative decoding (no spec_decode counters)."""
        # No `*_created` series beside the counters and histograms, as vLLM's (like vLLM, this sets
        # prometheus_client's process-wide switch).
        disable_created_metrics()
        self.registry = CollectorRegistry()
        labels = {"labelnames": ["model_name"], "registry": self.registry}

        def gauge(name: str, doc: str):
            return Gauge(f"kvserve:{name}", doc, **labels).labels(model_name)

        def counter(name: str, doc: str):
            return Counter(f"kvserve:{name}", doc, **labels).labels(model_name)

        def histogram(name: str, doc: str, buckets):
            return Histogram(f"kvserve:{name}", doc, buckets=buckets, **labels).labels(model_name)

        self.num_running = gauge("num_requests_running", "Requests in the running batch.")
        self.num_waiting = gauge("num_requests_waiting", "Requests accepted and waiting to run.")
        self.kv_cache_usage = gauge("kv_cache_usage_perc", "Fraction of KV-cache blocks in use (1 = full).")
        self.prefix_cache_queries = counter("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.")
        self.prefix_cache_hits = counter("prefix_cache_hits", "Prompt tokens found in the prefix cache.")
        self.num_preemptions = counter("num_preemptions", "Requests preempted (their KV cache freed, to recompute).")
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens of requests that produced a first token.")
        self.generation_tokens = counter("generation_tokens", "Generated tokens.")
        self.ttft = histogram("time_to_first_token_seconds", "Arrival to first token.", _LATENCY_BUCKETS)
        self.itl = histogram("inter_token_latency_seconds", "Time between a request's consecutive tokens.",
                             _LATENCY_BUCKETS)
        self.e2e = histogram("e2e_request_latency_seconds", "Arrival to last token.", _REQUEST_BUCKETS)
        self.queue_time = histogram("request_queue_time_seconds", "Arrival to first scheduled.", _REQUEST_BUCKETS)
        tokens = _token_buckets(max_model_len)
        self.request_prompt_tokens = histogram("request_prompt_tokens", "A finished request's prompt tokens.", tokens)
        self.request_generation_tokens = histogram("request_generation_tokens",
                                                   "A finished request's generated tokens (all its samples).", tokens)
        self.prefill_time = histogram("request_prefill_time_seconds", "First scheduled to first token.",
                                      _REQUEST_BUCKETS)
        self.decode_time = histogram("request_decode_time_seconds", "First token to last token.", _REQUEST_BUCKETS)
        self.inference_time = histogram("request_inference_time_seconds", "First scheduled to finished.",
                                        _REQUEST_BUCKETS)
        self.tpot = histogram("request_time_per_output_token_seconds",
                              "A finished request's decode time per token after its first.", _LATENCY_BUCKETS)
        self.max_generation_tokens = histogram("request_max_num_generation_tokens",
                                               "A finished request's most tokens generated by one sample.", tokens)
        self.params_n = histogram("request_params_n", "An added request's n.", _N_BUCKETS)
        self.params_max_tokens = histogram("request_params_max_tokens", "An added request's max_tokens.", tokens)
        self.iteration_tokens = histogram(
            "iteration_tokens_total", "The tokens of each engine step.",
            [b for b in _STEP_TOKEN_BUCKETS if b < max_num_batched_tokens] + [max_num_batched_tokens])
        self._max_model_len = max_model_len
        self.spec_decode = None
        if num_speculative_tokens:
            per_pos = Counter("kvserve:spec_decode_num_accepted_tokens_per_pos",
                              "Draft tokens accepted, by their place in their row (0: the first).",
                              labelnames=["model_name", "position"], registry=self.registry)
            self.spec_decode = SpecDecodeCounters(
                counter("spec_decode_num_drafts", "Decode rows that verified draft tokens."),
                counter("spec_decode_num_draft_tokens", "Draft tokens verified."),
                counter("spec_decode_num_accepted_tokens", "Draft tokens the model agreed with."),
                [per_pos.labels(model_name, str(k)) for k in range(num_speculative_tokens)])
        if cache_config is not None:
            Gauge("kvserve:cache_config_info", "The KV cache's configuration (labels).",
                  labelnames=sorted(cache_config), registry=self.registry).labels(**cache_config).set(1)
        self._request_success = Counter("kvserve:request_success", "Finished sequences by finish reason.",
                                        labelnames=["model_name", "finished_reason"], registry=self.registry)
        self._model_name = model_name
        self._max_loras = max_loras
        self._lora_info = None if max_loras is None else Gauge(
            "kvserve:lora_requests_info", "LoRA adapters in use (labels); the value is when they were read.",
            labelnames=["max_lora", "running_lora_adapters", "waiting_lora_adapters"], registry=self.registry)
        # Each unfinished request's last token time (None before its first) and each sample's tokens
        # so far (its outputs are DELTA); engine thread only.
        self._progress: dict[str, tuple[float | None, dict[int, int]]] = {}
        self._totals_seen: dict = {}  # counter -> the engine's total it already counted (scrapes only)
        # The token counters' values, for the periodic stats line (stats_logger.py).
        self.prompt_tokens_total = self.generation_tokens_total = 0

    def request_success(self, finished_reason: str):
        return self._request_success.labels(self._model_name, finished_reason)

    # ---- engine thread -------------------------------------------------------------------------

    def on_add(self, params: SamplingParams | PoolingParams) -> None:
        if isinstance(params, PoolingParams):
            return  # no sampling parameters
        self.params_n.observe(params.n)
        self.params_max_tokens.observe(params.max_tokens if params.max_tokens is not None else self._max_model_len)

    def on_step(self, outputs: list[RequestOutput], now: float, num_tokens: int) -> None:
        if num_tokens:
            self.iteration_tokens.observe(num_tokens)
        for output in outputs:
            if isinstance(output, PoolingRequestOutput):
                self._observe_pooled(output, now)
                continue
            new_tokens = sum(len(sample.token_ids) for sample in output.outputs)
            last, counts = self._progress.get(output.request_id, (None, {}))
            for sample in output.outputs:
                counts[sample.index] = counts.get(sample.index, 0) + len(sample.token_ids)
            if new_tokens:
                self.generation_tokens.inc(new_tokens)
                self.generation_tokens_total += new_tokens
                if last is None:
                    self._count_prompt(output)
                    self.ttft.observe(now - output.metrics.arrival_time)
                else:
                    self.itl.observe(now - last)
                last = now
            if output.finished:
                self._progress.pop(output.request_id, None)
                self._observe_finished(output, counts, now)
                for sample in output.outputs:
                    self.request_success(sample.finish_reason).inc()
            else:
                self._progress[output.request_id] = (last, counts)

    def _observe_finished(self, output: RequestOutput, counts: dict[int, int], now: float) -> None:
        metrics = output.metrics
        generated = sum(counts.values())
        self._observe_request(output, now)
        self.request_generation_tokens.observe(generated)
        self.max_generation_tokens.observe(max(counts.values(), default=0))
        scheduled, first, last = metrics.first_scheduled_time, metrics.first_token_time, metrics.last_token_time
        if scheduled is not None and first is not None:
            self.prefill_time.observe(first - scheduled)
        if first is not None and last is not None:
            self.decode_time.observe(last - first)
            # Per sample (of n, which vLLM records as n requests); 0 with no token after the first, as vLLM.
            after_first = generated / max(1, len(output.outputs)) - 1
            self.tpot.observe((last - first) / after_first if after_first > 0 else 0.0)

    def _observe_pooled(self, output: PoolingRequestOutput, now: float) -> None:
        """A pooled prompt (a pooling engine's request): its prompt tokens and times, no generation."""
        self._count_prompt(output)
        self._observe_request(output, now)
        self.request_success("stop").inc()

    def _count_prompt(self, output: RequestOutput | PoolingRequestOutput) -> None:
        self.prompt_tokens.inc(len(output.prompt_token_ids))
        self.prompt_tokens_total += len(output.prompt_token_ids)

    def _observe_request(self, output: RequestOutput | PoolingRequestOutput, now: float) -> None:
        """What every finished request records: its latency, prompt length, queue and inference times."""
        metrics = output.metrics
        self.e2e.observe(now - metrics.arrival_time)
        self.request_prompt_tokens.observe(len(output.prompt_token_ids))
        if metrics.first_scheduled_time is not None:
            self.queue_time.observe(metrics.first_scheduled_time - metrics.arrival_time)
            self.inference_time.observe(now - metrics.first_scheduled_time)

    def on_abort(self, request_ids: Sequence[str]) -> None:
        for request_id in request_ids:
            self._progress.pop(request_id, None)
            self.request_success("abort").inc()

    # ---- scrapes (event loop) -------------------------------------------------------------------

    def render(self, engine: AsyncEngine) -> bytes:
        snapshot = engine.snapshot
        self.num_running.set(snapshot.num_running)
        self.num_waiting.set(engine.num_waiting)
        self.kv_cache_usage.set(snapshot.kv_cache_usage)
        totals = [(self.prefix_cache_queries, snapshot.prefix_cache_queries),
                  (self.prefix_cache_hits, snapshot.prefix_cache_hits),
                  (self.num_preemptions, snapshot.num_preemptions)]
        if self.spec_decode is not None:
            totals += self.spec_decode.totals(snapshot)
        # Counters that follow the engine's own totals: each scrape adds what it counted since.
        for counter, total in totals:
            counter.inc(total - self._totals_seen.get(counter, 0))
            self._totals_seen[counter] = total
        if self._lora_info is not None:  # one series: the adapters now
            self._lora_info.clear()
            self._lora_info.labels(str(self._max_loras), ",".join(snapshot.running_loras),
                                   ",".join(snapshot.waiting_loras)).set_to_current_time()
        return generate_latest(self.registry)


@router.get("/metrics")
async def metrics(raw_request: Request) -> Response:
    state = raw_request.app.state
    return Response(state.metrics.render(state.engine), media_type=CONTENT_TYPE_LATEST)
