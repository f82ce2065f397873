"""What `kvserve bench throughput` and `kvserve bench latency` share: the model the flags name, the
Engine built from the flags (its load timed), the sampling of a fixed-length request, and the
settings every result starts with (so that a JSON result says what was measured, where and how).
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import datetime, timezone

import torch

import kvserve
from kvserve.bench.checkpoint import ensure_model
from kvserve.bench.machine import cpu_name
from kvserve.engine import Engine
from kvserve.engine_args import engine_kwargs
from kvserve.sampling_params import RequestOutputKind, SamplingParams


def model_name(args: argparse.Namespace) -> str | None:
    """What Engine(model=...) gets: the preset's checkpoint directory, --model, or None (the default)."""
    return str(ensure_model(args.preset)) if args.preset is not None else args.model


def build_engine(args: argparse.Namespace) -> tuple[Engine, float]:
    """The Engine and the seconds it took to load."""
    start = time.perf_counter()
    engine = Engine(model_name(args), **engine_kwargs(args))
    return engine, time.perf_counter() - start


def fixed_length(output_len: int, detokenize: bool = True) -> SamplingParams:
    """Greedy, exactly output_len tokens (EOS ignored), as every WORKLOAD.md case generates; the
    output is reported once, when the request finishes."""
    return SamplingParams(temperature=0.0, max_tokens=output_len, min_tokens=output_len, ignore_eos=True,
                          detokenize=detokenize, output_kind=RequestOutputKind.FINAL_ONLY)


def run_settings(args: argparse.Namespace, engine: Engine, load_s: float) -> dict:
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "kvserve_version": kvserve.__version__,
        "torch_version": torch.__version__,
        "cpu": cpu_name(),
        "num_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "model": args.model,
        "preset": args.preset,
        "dtype": str(engine.dtype).removeprefix("torch."),
        "kv_cache_dtype": str(engine.cache_dtype).removeprefix("torch."),
        "kv_cache_tokens": (engine.scheduler.config.num_blocks - 1) * engine.scheduler.config.block_size,
        "device": str(engine.device),
        "engine_args": engine_kwargs(args),
        "load_s": load_s,
    }
