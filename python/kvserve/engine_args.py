"""The Engine's command-line flags, with vLLM's names, shared by `kvserve serve`, `generate` and `chat`."""

from __future__ import annotations

import argparse
import logging

from kvserve.engine import Engine
from kvserve.loader import LOAD_FORMATS

logger = logging.getLogger("kvserve")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=None,
                        help="a Hugging Face model directory, a GGUF file or a hub id (default: SmolLM2-135M-Instruct, "
                        "fetched once into ~/.cache/kvserve)")
    parser.add_argument("--tokenizer", help="the tokenizer's directory (default: the model's)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16 (default: auto)")
    parser.add_argument("--max-model-len", type=int, help="context length (default: the model's)")
    parser.add_argument("--max-num-seqs", type=int, default=256, help="sequences per batch (default: 256)")
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192, help="tokens per step (default: 8192)")
    parser.add_argument("--block-size", type=int, default=16, help="tokens per KV-cache block (default: 16)")
    parser.add_argument("--kv-cache-memory", type=float, metavar="GIB",
                        help="memory for the KV cache on the CPU, in GiB (default: 4)")
    parser.add_argument("--gpu-memory-utilization", type=float, metavar="FRACTION",
                        help="accepted for vLLM compatibility; only a GPU runner would use it (the CPU runner sizes "
                        "its KV cache with --kv-cache-memory)")
    parser.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True,
                        help="reuse the KV cache of shared prompt prefixes (default: on)")
    parser.add_argument("--load-format", choices=LOAD_FORMATS, default="auto",
                        help="'dummy' keeps the model's shapes with random weights")
    parser.add_argument("--seed", type=int, default=0, help="seed of the engine's random state and dummy weights")


def engine_from_args(args: argparse.Namespace) -> Engine:
    """The Engine the flags describe; ValueError for a bad combination (raised by the Engine)."""
    if args.gpu_memory_utilization is not None:
        logger.info("--gpu-memory-utilization %s has no effect on the CPU runner: the KV cache takes "
                    "--kv-cache-memory GiB", args.gpu_memory_utilization)
    return Engine(args.model, tokenizer=args.tokenizer, dtype=args.dtype, max_model_len=args.max_model_len,
                  block_size=args.block_size, max_num_seqs=args.max_num_seqs,
                  max_num_batched_tokens=args.max_num_batched_tokens, enable_prefix_caching=args.enable_prefix_caching,
                  kv_cache_memory_gb=args.kv_cache_memory, seed=args.seed, load_format=args.load_format)
