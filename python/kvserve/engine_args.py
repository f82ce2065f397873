"""The Engine's constructor arguments as command-line flags, under vLLM's names, for every command
that builds an Engine (`kvserve serve`, `generate`, `chat`, `bench throughput`, `bench latency`).

    add_engine_arguments(parser)          # --dtype, --max-num-seqs, --enable-prefix-caching, ...
    Engine(model, **engine_kwargs(args))

The model itself is not among them: serve, generate and chat take it as their positional argument
(add_model_argument, engine_from_args); the bench commands also take presets.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from kvserve.kv_cache import KV_CACHE_DTYPES
from kvserve.loader.load import LOAD_FORMATS
from kvserve.pooling import RUNNERS
from kvserve.quantization import QUANTIZATION_ALIASES, QUANTIZATIONS
from kvserve.sampling_params import is_int

if TYPE_CHECKING:  # the Engine (and torch) load when one is built, not for `kvserve --help`
    from kvserve.engine import Engine

# As vLLM's --dtype: "half" is float16, "float" float32.
DTYPES = ("auto", "bfloat16", "float32", "float16", "half", "float")
GENERATION_CONFIGS = ("auto", "vllm")
SCHEDULING_POLICIES = ("fcfs", "priority")

# The Engine keywords the flags set; each flag's dest is the keyword's name.
ENGINE_FLAGS = ("tokenizer", "dtype", "load_format", "max_model_len", "block_size", "max_num_seqs",
                "max_num_batched_tokens", "enable_prefix_caching", "enable_chunked_prefill",
                "long_prefill_token_threshold", "kv_cache_memory_gb", "seed", "skip_tokenizer_init", "device",
                "gpu_memory_utilization", "enforce_eager", "async_scheduling", "tensor_parallel_size",
                "trust_remote_code", "generation_config", "override_generation_config", "scheduling_policy",
                "max_logprobs", "kv_cache_dtype", "runner", "pooler_config", "hf_overrides", "speculative_config",
                "quantization")


def flag_type(parse, valid, expected: str):
    """An argparse type: parse(value) when it parses and valid() accepts it, else "expected ...,
    got VALUE"."""
    def convert(value: str):
        try:
            result = parse(value)
        except ValueError:  # json.JSONDecodeError is one
            result = None
        if result is None or not valid(result):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value!r}")
        return result
    return convert


# vLLM's --override-generation-config: a JSON object, e.g. '{"temperature": 0.5}'.
_json_object = flag_type(json.loads, lambda v: isinstance(v, dict), "a JSON object, e.g. '{\"temperature\": 0.5}'")


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=None,
                        help="a Hugging Face model directory, a GGUF file or a hub id (default: SmolLM2-135M-Instruct, "
                        "fetched once into ~/.cache/kvserve)")


def add_chat_template_argument(parser: argparse.ArgumentParser) -> None:
    """--chat-template, for the commands that render chats (engine_from_args applies it)."""
    parser.add_argument("--chat-template", metavar="TEMPLATE",
                        help="the chat template to use instead of the model's (for models without one): "
                        "a Jinja file's path, or the template itself")


# Tokens per step: an offline run wants the largest products; a server, first tokens soon, so a
# burst of prompts is prefilled in chunks (vLLM's CPU server defaults to 2048 as well).
OFFLINE_MAX_NUM_BATCHED_TOKENS = 8192
SERVING_MAX_NUM_BATCHED_TOKENS = 2048


def add_engine_arguments(parser: argparse.ArgumentParser,
                         max_num_batched_tokens: int = OFFLINE_MAX_NUM_BATCHED_TOKENS) -> None:
    group = parser.add_argument_group("engine")
    group.add_argument("--tokenizer",
                       help="a Hugging Face directory or hub id to take the tokenizer from (default: the model's)")
    group.add_argument("--dtype", choices=DTYPES, default="auto",
                       help="auto: the checkpoint's dtype (a GGUF file of quantized blocks: bfloat16 where the "
                            "device multiplies it natively, else float32)")
    group.add_argument("--load-format", choices=LOAD_FORMATS, default="auto",
                       help="dummy: the model's shapes with random weights (nothing read from disk)")
    group.add_argument("--max-model-len", type=int,
                       help="context length (default: the model's max_position_embeddings, stretched by its rope "
                       "scaling as vLLM derives it)")
    group.add_argument("--block-size", type=int, default=16, help="tokens per KV-cache block (default: 16)")
    group.add_argument("--max-num-seqs", type=int, default=256, help="the most sequences in one step (default: 256)")
    group.add_argument("--max-num-batched-tokens", type=int, default=max_num_batched_tokens,
                       help=f"the most tokens in one step (default: {max_num_batched_tokens})")
    group.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True,
                       help="reuse the KV cache of shared prompt prefixes (default: on)")
    group.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction, default=True,
                       help="split long prompts across steps (default: on)")
    group.add_argument("--long-prefill-token-threshold", type=int, default=0, metavar="TOKENS",
                       help="the most tokens one sequence computes a step, so that a long prompt leaves room for "
                       "the requests behind it (default: 0, no cap; needs chunked prefill)")
    group.add_argument("--kv-cache-memory", dest="kv_cache_memory_gb", type=float, metavar="GIB",
                       help="KV-cache size in GiB (default: 4 on the CPU; on a GPU, what "
                       "--gpu-memory-utilization leaves)")
    group.add_argument("--device", default="auto", help="auto (a CUDA GPU when one is visible), cpu, cuda or cuda:N")
    group.add_argument("--gpu-memory-utilization", type=float, default=0.9, metavar="FRACTION",
                       help="the share of the GPU's memory the engine may take (default: 0.9; GPU only)")
    group.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs for decode steps (GPU only)")
    group.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None,
                       help="schedule each step before the tokens of the one before are known, so the GPU "
                       "never waits for the host between steps (default: on a GPU)")
    group.add_argument("--scheduling-policy", choices=SCHEDULING_POLICIES, default="fcfs",
                       help="fcfs: requests run in arrival order (one with a priority is refused); priority: "
                       "lower priorities first, then by arrival (default: fcfs)")
    group.add_argument("--max-logprobs", type=int, default=20, metavar="N",
                       help="the most log-probabilities a request may ask for a position (logprobs, "
                       "top_logprobs, prompt_logprobs); -1: the whole vocabulary (default: 20)")
    group.add_argument("--seed", type=int, default=0, help="seed of the engine's random state and dummy weights")
    group.add_argument("--generation-config", choices=GENERATION_CONFIGS, default="auto",
                       help="auto: sampling defaults (temperature, top_p, ...) from the model's "
                       "generation_config.json; vllm: ignore them")
    group.add_argument("--override-generation-config", type=_json_object, metavar="JSON",
                       help="sampling defaults that replace the generation config's, e.g. '{\"temperature\": "
                       "0.5}' (temperature, top_p, top_k, min_p, repetition_penalty, max_new_tokens)")
    group.add_argument("--runner", choices=RUNNERS, default="auto",
                       help="pooling: embeddings (POST /v1/embeddings), not generation; auto: pooling for a base "
                       "model's or a classifier's checkpoint (no LM head; a classifier answers POST /classify), "
                       "else generate")
    group.add_argument("--pooler-config", type=_json_object, metavar="JSON",
                       help="how --runner pooling pools, e.g. '{\"pooling_type\": \"MEAN\", \"normalize\": false}' "
                       "(LAST, MEAN or CLS; default: the checkpoint's sentence-transformers files, else LAST, "
                       "normalized)")
    group.add_argument("--hf-overrides", type=_json_object, metavar="JSON",
                       help="config.json keys to replace or add, e.g. '{\"is_matryoshka\": true}' or "
                       "'{\"max_position_embeddings\": 8192}'")
    group.add_argument("--speculative-config", type=_json_object, metavar="JSON",
                       help="speculative decoding by prompt lookup, e.g. '{\"method\": \"ngram\", "
                       "\"num_speculative_tokens\": 4, \"prompt_lookup_max\": 4}': decodes guess tokens from "
                       "earlier text and the model checks them in the same step (pays where the output repeats "
                       "its input)")
    group.add_argument("--kv-cache-dtype", default="auto", choices=list(KV_CACHE_DTYPES),
                       help="auto: the KV cache in the model's dtype; fp8 (= fp8_e4m3) or fp8_e5m2: "
                       "8-bit keys and values, twice the tokens of a 16-bit cache in the same memory (each rounded "
                       "to 8 bits); bfloat16: a float32 model's cache in 16 bits")
    group.add_argument("--quantization", "-q", default=None, choices=[*QUANTIZATIONS, *QUANTIZATION_ALIASES],
                       help="fp8: the decoder layers' weights as 8-bit floats (e4m3) with a scale per row, half the "
                       "bytes of 16-bit weights to read each decode step; gptq, awq, compressed-tensors: the "
                       "checkpoint's own 4-bit (GPTQ, compressed-tensors: or 8-bit) weights, which load as they "
                       "are without the flag too (gptq_marlin and awq_marlin, vLLM's names, are gptq and awq); "
                       "gguf: a GGUF file's blocks, read as they are either way")
    group.add_argument("--tensor-parallel-size", "-tp", type=int, default=1, metavar="N",
                       help="accepted for vLLM's scripts: only 1 (kvserve runs on one device)")
    group.add_argument("--trust-remote-code", action="store_true",
                       help="accepted for vLLM's scripts: kvserve never runs a checkpoint's code (its "
                       "architectures are built in)")
    group.add_argument("--skip-tokenizer-init", action="store_true",
                       help="load no tokenizer: prompts are token ids and outputs are not detokenized "
                       "(not for generate and chat, which take text)")


def engine_kwargs(args: argparse.Namespace) -> dict:
    """The Engine keyword arguments the flags of add_engine_arguments hold."""
    return {name: getattr(args, name) for name in ENGINE_FLAGS}


# The scheduler's integer fields are int32 in C++.
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def int_argument(name: str, value, default: int, low: int = 1, high: int = INT32_MAX) -> int:
    """An integer Engine argument checked before it reaches the scheduler (int32 in C++); None is
    the default, as in vLLM, where these arguments default to None."""
    if value is None:
        return default
    if not is_int(value) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return value


def bool_argument(name: str, value, default: bool) -> bool:
    """A flag Engine argument; None is the default (vLLM's enable_prefix_caching defaults to None)."""
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True, False or None, got {value!r}")
    return value


def fraction_argument(name: str, value) -> float:
    """A share in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return float(value)


def engine_from_args(args: argparse.Namespace, **more) -> Engine:
    """The Engine that the model argument and the engine flags describe (and `more` Engine arguments,
    from a command's own flags), with the --chat-template of the commands that have one (ValueError
    for a bad combination, or a bad template: read before the model loads, so that it fails at once)."""
    from kvserve.chat_template import load_chat_template
    from kvserve.engine import Engine

    flag = getattr(args, "chat_template", None)
    template = load_chat_template(flag) if flag is not None else None
    engine = Engine(args.model, **engine_kwargs(args), **more)
    if template is not None and engine.tokenizer is not None:
        engine.tokenizer.chat_template = template
    return engine
