"""The Engine's constructor arguments as command-line flags, under vLLM's names, for every command
that builds an Engine (`kvserve bench throughput`, `kvserve bench latency`).

    add_engine_arguments(parser)          # --dtype, --max-num-seqs, --enable-prefix-caching, ...
    Engine(model, **engine_kwargs(args))

The model itself is not among them: each command says how it names one.
"""

from __future__ import annotations

import argparse

from kvserve.loader.load import LOAD_FORMATS

DTYPES = ("auto", "bfloat16", "float32", "float16")

# The Engine keywords the flags set; each flag's dest is the keyword's name.
ENGINE_FLAGS = ("tokenizer", "dtype", "load_format", "max_model_len", "block_size", "max_num_seqs",
                "max_num_batched_tokens", "enable_prefix_caching", "enable_chunked_prefill",
                "kv_cache_memory_gb", "seed", "skip_tokenizer_init")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine")
    group.add_argument("--tokenizer", help="a Hugging Face directory to take the tokenizer from (default: the model's)")
    group.add_argument("--dtype", choices=DTYPES, default="auto", help="auto: the checkpoint's dtype")
    group.add_argument("--load-format", choices=LOAD_FORMATS, default="auto",
                       help="dummy: the model's shapes with random weights (nothing read from disk)")
    group.add_argument("--max-model-len", type=int, help="default: the model's max_position_embeddings")
    group.add_argument("--block-size", type=int, default=16, help="tokens per KV-cache block")
    group.add_argument("--max-num-seqs", type=int, default=256, help="the most sequences in one step")
    group.add_argument("--max-num-batched-tokens", type=int, default=8192, help="the most tokens in one step")
    group.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    group.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction, default=True)
    group.add_argument("--kv-cache-memory-gb", type=float, help="KV-cache size in GiB (default 4)")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--skip-tokenizer-init", action="store_true",
                       help="load no tokenizer: prompts are token ids and outputs are not detokenized")


def engine_kwargs(args: argparse.Namespace) -> dict:
    """The Engine keyword arguments the flags of add_engine_arguments hold."""
    return {name: getattr(args, name) for name in ENGINE_FLAGS}
