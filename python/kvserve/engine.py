"""Engine: the offline entry point, with vLLM's `LLM` interface.

    engine = Engine(model="path/or/Org-Name/or/file.gguf")       # None: the default model
    outs = engine.generate(["Hello, my name is"], SamplingParams(max_tokens=32))
    outs[0].outputs[0].text

One step is three calls (ARCHITECTURE.md): the C++ scheduler builds the batch, the model runner
turns it into sampled tokens, the scheduler applies them; then the text side (detokenizer, stop
strings, logprobs) catches up in Python. On a GPU, whose runner launches a step and returns before
it is computed, steps overlap, and by default they are scheduled ahead (vLLM's async scheduling):
step() schedules and launches the next step while the last one is still computing (its decode rows
take that step's tokens on the device, scheduler.h), then waits for the last step's tokens, hands
them to the scheduler, runs that step's Python side (token ids, text, outputs) while the GPU
computes the new step, queues the new step's sampler (which reads those token ids), and returns
the finished step's outputs. The GPU always has the next step queued, so it never waits for the
host between steps; whatever the caller does between two step() calls overlaps the GPU too.
With `async_scheduling=False` a step is scheduled after the tokens of the one before are applied
(the GPU then waits for the scheduler and the launch between steps).
`add_request / step / abort / has_unfinished_requests` are public so the engine can run inside
another loop (the server's); the offline API above them (generate, chat, beam_search) is in
offline_api.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import time
from collections.abc import Sequence

import torch

from kvserve import _C
from kvserve.classify import Classifier
from kvserve.device import resolve_device
from kvserve.engine_args import (GENERATION_CONFIGS, INT32_MAX, INT32_MIN, OFFLINE_MAX_NUM_BATCHED_TOKENS,
                                 SCHEDULING_POLICIES, bool_argument, fraction_argument, int_argument)
from kvserve.fan_out import MAX_N, FannedOutRequest, FanOuts, split
from kvserve.grammar import REASONING_PARSERS, THINK_END, GrammarCompiler
from kvserve.kv_cache import (DEFAULT_CPU_KV_CACHE_GB, allocate_kv_caches, check_kv_cache_dtype, kv_cache_dtype_for,
                              num_blocks_for_budget)
from kvserve.loader import LoadedModel, load_model, resolve_model_path
from kvserve.lora.adapter import LoRAAdapter
from kvserve.lora.adapters import LoRAAdapters
from kvserve.lora.request import LoRARequest
from kvserve.model_config import sampling_defaults
from kvserve.model_runner import LaunchedStep, ModelRunner, StepResult
from kvserve.offline_api import OfflineAPI
from kvserve.output_processor import AppliedStep, process_step
from kvserve.outputs import RequestOutput
from kvserve.pooling import CLASSIFIER_TASKS, PooledState, PoolerConfig, PoolingParams, check_dimensions
from kvserve.prompts import PromptInput, check_prompt_ids, normalize_prompts
from kvserve.request_state import RequestState, SequenceState
from kvserve.sampling_params import RequestOutputKind, SamplingParams, is_int, logprobs_wanted
from kvserve.speculative import SpeculativeConfig
from kvserve.tokenizer import Tokenizer

logger = logging.getLogger("kvserve")

# Scheduled ahead, a step decodes the last one's tokens as its sampler left them, and a row whose
# token changes when the sampler settles its rechecks is retracted: a step lost for its sequence.
# Where more than this share of the recent rows changed (flat distributions: high temperatures, or a
# model with random weights), losing those steps costs more than the host's wait between steps
# (a few % of a step), so the next step has the tokens settled before it reads them.
RESAMPLED_SHARE_LIMIT = 0.03

def load_tokenizer(loaded: LoadedModel, tokenizer: str | None) -> Tokenizer:
    """The model's tokenizer: a given directory or hub id, the GGUF file's own, or the checkpoint
    directory's."""
    if tokenizer is not None:
        return Tokenizer.from_pretrained(resolve_model_path(tokenizer))
    if loaded.tokenizer is not None:
        parts = loaded.tokenizer
        return Tokenizer(parts.backend, chat_template=parts.chat_template, bos_token=parts.bos_token,
                         eos_token=parts.eos_token, add_bos_token=parts.add_bos_token)
    return Tokenizer.from_pretrained(loaded.path)


def _cache_key(lora_request: LoRARequest | None, cache_salt: str | None) -> str:
    """The scheduler's cache salt: requests share prefix-cache blocks only under equal keys, so the
    key holds the adapter (its KV differs from the base model's) and the prompt's own salt, in a
    form no salt can imitate (the adapter id, 0 for none, ends at the first "|")."""
    if lora_request is None and cache_salt is None:
        return ""
    return f"{lora_request.lora_int_id if lora_request is not None else 0}|{cache_salt or ''}"


class Engine(OfflineAPI):
    def __init__(self, model: str | None = None, *, tokenizer: str | None = None, dtype: str = "auto",
                 max_model_len: int | None = None, block_size: int | None = 16, max_num_seqs: int | None = 256,
                 max_num_batched_tokens: int | None = OFFLINE_MAX_NUM_BATCHED_TOKENS,
                 enable_prefix_caching: bool | None = True, enable_chunked_prefill: bool | None = True,
                 long_prefill_token_threshold: int | None = 0, kv_cache_memory_gb: float | None = None,
                 seed: int | None = 0, load_format: str = "auto", skip_tokenizer_init: bool = False,
                 device: str = "auto", gpu_memory_utilization: float = 0.9, enforce_eager: bool = False,
                 async_scheduling: bool | None = None, generation_config: str = "auto",
                 tensor_parallel_size: int = 1, trust_remote_code: bool = False, reasoning_parser: str | None = None,
                 enable_lora: bool = False, max_loras: int = 1, max_lora_rank: int = 16,
                 scheduling_policy: str = "fcfs", max_logprobs: int = 20,
                 override_generation_config: dict | None = None, kv_cache_dtype: str = "auto",
                 runner: str = "auto", pooler_config: dict | PoolerConfig | None = None,
                 hf_overrides: dict | None = None, speculative_config: dict | str | None = None,
                 quantization: str | None = None):
        """`device`: "auto" (a CUDA GPU when one is visible, else the CPU), "cpu", "cuda" or "cuda:N".
        On a GPU the KV cache takes what `gpu_memory_utilization` of its memory leaves after the
        weights and a profiling step (unless `kv_cache_memory_gb` is given), and decode steps replay
        CUDA graphs unless `enforce_eager`. `async_scheduling`: schedule each step before the
        tokens of the one before are known (module docstring); None: on a GPU only (on the CPU,
        which computes a step as it is launched, it would only hold every output back a step).
        `seed`: of torch's random state (unseeded requests draw from it) and of dummy weights; None
        leaves torch's random state as it is.
        `generation_config`: "auto" takes the sampling defaults of the model's generation_config.json
        (default_sampling_params), "vllm" ignores them; `override_generation_config` (vLLM's, e.g.
        {"temperature": 0.5}; its keys temperature, top_p, top_k, min_p, repetition_penalty and
        max_new_tokens) replaces or adds to what that leaves. As in vLLM, None for max_num_seqs,
        max_num_batched_tokens, block_size, enable_prefix_caching and enable_chunked_prefill means
        the default. `long_prefill_token_threshold` (vLLM's; 0: none): the most tokens one
        sequence computes a step, so that a long prompt takes a slice of each step and the decodes
        beside it keep going (prompts over it take more steps to their first token). `tensor_parallel_size`
        (only 1) and `trust_remote_code` are accepted for vLLM's scripts: kvserve runs on one
        device, and its architectures are built in. `kv_cache_dtype` (vLLM's): "auto" (the model's
        dtype), or "fp8" (= "fp8_e4m3") or "fp8_e5m2": an 8-bit KV cache, twice the
        tokens of a 16-bit one in the same memory, each key and value rounded to 8 bits; or for a
        float32 model "bfloat16" (kvserve.kv_cache).
        `reasoning_parser` ("qwen3", "deepseek_r1"; vLLM's): the model thinks before it answers, and
        structured outputs hold what follows its </think> token.
        `enable_lora`: requests may run with a LoRA adapter (add_request's lora_request, vLLM's);
        `max_loras` adapters stay loaded (loading another drops the least recently used), each of
        rank `max_lora_rank` at most. On the CPU a decode step whose tokens all run one adapter
        runs in the decoder stack as the base model's do; other steps with adapters run the model
        layer by layer (on a GPU without the CUDA graphs).
        `scheduling_policy` (vLLM's): "fcfs" runs requests in arrival order and refuses a request
        with a priority; "priority" runs lower priorities first (add_request's, generate's), then
        by arrival, and preempts first the running request that would run last (the largest
        priority, then the latest arrival).
        `max_logprobs` (vLLM's, default 20): the most log-probabilities a request may ask for a
        position (SamplingParams.logprobs, prompt_logprobs); -1: the whole vocabulary.
        `runner` (vLLM's): "generate", "pooling" (embeddings: embed(), requests with PoolingParams;
        kvserve.pooling; a classifier's checkpoint: classify(), kvserve.classify; either: encode()
        for vLLM's pooling tasks, every token's included), or "auto":
        pooling for a base model's or a classifier's checkpoint (no LM head), else generate. `pooler_config` (a pooling engine's; {"pooling_type": "LAST" | "MEAN" | "CLS",
        "normalize": bool}) overrides what the checkpoint's sentence-transformers files say.
        `hf_overrides` (vLLM's): config.json keys to replace or add, e.g. {"is_matryoshka": True}.
        `speculative_config` (vLLM's, its "ngram" method): decodes guess tokens by prompt lookup and
        the model checks them in the same step (kvserve.speculative); steps are then not scheduled
        ahead (a step's token count is known only once its drafts are checked).
        `quantization` (vLLM's): "fp8" stores the decoder layers' weights as e4m3 codes with a scale
        per row, half a 16-bit weight's bytes (kvserve.quantization); "gptq", "awq",
        "compressed-tensors" or "gguf" names what the checkpoint is (its integer weights or blocks load
        as uint4 or int8 codes either way; vLLM's "gptq_marlin" and "awq_marlin" are "gptq" and "awq")."""
        start = time.perf_counter()
        if isinstance(tensor_parallel_size, bool) or tensor_parallel_size != 1:
            raise ValueError(f"tensor_parallel_size must be 1 (kvserve runs on one device), "
                             f"got {tensor_parallel_size!r}")
        if trust_remote_code:
            logger.info("trust_remote_code: kvserve never runs a checkpoint's code (its architectures are built in)")
        if reasoning_parser is not None and reasoning_parser not in REASONING_PARSERS:
            raise ValueError(f"reasoning_parser must be one of {list(REASONING_PARSERS)} or None, got {reasoning_parser!r}")
        if scheduling_policy not in SCHEDULING_POLICIES:
            raise ValueError(f"scheduling_policy must be one of {list(SCHEDULING_POLICIES)}, got {scheduling_policy!r}")
        self.scheduling_policy = scheduling_policy
        if generation_config not in GENERATION_CONFIGS:
            raise ValueError(f"generation_config must be one of {list(GENERATION_CONFIGS)}, got {generation_config!r}")
        gpu_memory_utilization = fraction_argument("gpu_memory_utilization", gpu_memory_utilization)
        max_num_seqs = int_argument("max_num_seqs", max_num_seqs, 256)
        max_num_batched_tokens = int_argument("max_num_batched_tokens", max_num_batched_tokens,
                                              OFFLINE_MAX_NUM_BATCHED_TOKENS)
        enable_prefix_caching = bool_argument("enable_prefix_caching", enable_prefix_caching, True)
        enable_chunked_prefill = bool_argument("enable_chunked_prefill", enable_chunked_prefill, True)
        long_prefill_token_threshold = int_argument("long_prefill_token_threshold", long_prefill_token_threshold, 0,
                                                    low=0)
        # The scheduler's rule too (scheduler_config.cpp), checked before the model loads.
        if long_prefill_token_threshold and not enable_chunked_prefill:
            raise ValueError(f"long_prefill_token_threshold {long_prefill_token_threshold} needs chunked prefill: "
                             "a capped prompt is computed in chunks")
        block_size = 16 if block_size is None else block_size
        # The scheduler's rule (scheduler_config.cpp), checked before the KV cache is sized by it.
        if not is_int(block_size) or not 1 <= block_size <= 256 or block_size & (block_size - 1):
            raise ValueError(f"block_size must be a power of two in [1, 256], got {block_size!r}")
        if seed is not None and (not is_int(seed) or not -(2**63) <= seed < 2**64):
            raise ValueError(f"seed must be an integer in [-2**63, 2**64 - 1] or None, got {seed!r}")
        if max_model_len is not None and not is_int(max_model_len):
            raise ValueError(f"max_model_len must be an integer or None, got {max_model_len!r}")
        if seed is not None:
            torch.manual_seed(seed)
        self.device = resolve_device(device)
        check_kv_cache_dtype(kv_cache_dtype)  # before loading
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        # No seed: dummy weights from torch's random state as it is.
        loaded = load_model(model, dtype=dtype, load_format=load_format, device=self.device,
                            seed=seed if seed is not None else torch.initial_seed(), runner=runner,
                            hf_overrides=hf_overrides, quantization=quantization)
        self.model_config = config = loaded.model_config
        # A classifier's head (kvserve.classify), and a pooling engine's pooler (its model has no LM
        # head); None: the engine generates.
        self.classifier = Classifier.of_model(loaded.model, config.labels) if config.labels is not None else None
        self.pooler = None if loaded.model.has_lm_head else PoolerConfig.for_model(
            loaded.path, pooler_config, classifier=self.classifier is not None)
        if self.pooler is None and pooler_config is not None:
            raise ValueError("pooler_config needs a pooling engine (runner='pooling')")
        if not isinstance(enable_lora, bool):
            raise ValueError(f"enable_lora must be True or False, got {enable_lora!r}")
        self.loras = LoRAAdapters(loaded.model, max_loras, max_lora_rank) if enable_lora else None
        if override_generation_config is not None and not isinstance(override_generation_config, dict):
            raise ValueError(f"override_generation_config must be a dict, e.g. {{'temperature': 0.5}}, got "
                             f"{override_generation_config!r}")
        if generation_config == "vllm" or override_generation_config:
            defaults = {} if generation_config == "vllm" else config.default_sampling
            overrides = sampling_defaults(override_generation_config or {}, strict=True)
            SamplingParams(**overrides)  # a ValueError for a bad value now, not in every request
            self.model_config = config = dataclasses.replace(config, default_sampling={**defaults, **overrides})
        self.dtype = loaded.dtype
        self.cache_dtype = kv_cache_dtype_for(kv_cache_dtype, self.dtype)
        self.tokenizer = None if skip_tokenizer_init else load_tokenizer(loaded, tokenizer)

        if max_model_len is None:
            max_model_len = config.max_model_len
        elif not 0 < max_model_len <= config.max_model_len:
            raise ValueError(f"max_model_len must be in [1, {config.max_model_len}] (the model's "
                             f"max_position_embeddings, stretched by its rope scaling), got {max_model_len}")
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        if not is_int(max_logprobs) or max_logprobs < -1:
            raise ValueError(f"max_logprobs must be an integer >= 0, or -1 for the whole vocabulary, "
                             f"got {max_logprobs!r}")
        self.max_logprobs = logprobs_wanted(max_logprobs, config.vocab_size)
        if self.device.type == "cuda" and kv_cache_memory_gb is None:
            from kvserve.gpu.memory import plan_kv_cache

            num_blocks = plan_kv_cache(loaded.model, config, self.cache_dtype, self.device, block_size=block_size,
                                       max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs,
                                       max_model_len=max_model_len,
                                       gpu_memory_utilization=gpu_memory_utilization).num_blocks
            budget = f"gpu_memory_utilization {gpu_memory_utilization}"
        else:
            budget_gb = DEFAULT_CPU_KV_CACHE_GB if kv_cache_memory_gb is None else kv_cache_memory_gb
            if not budget_gb > 0:
                raise ValueError(f"kv_cache_memory_gb must be > 0, got {kv_cache_memory_gb}")
            num_blocks = num_blocks_for_budget(config, self.cache_dtype, block_size, budget_gb * 2**30)
            budget = f"kv_cache_memory_gb {budget_gb}"
        if (num_blocks - 1) * block_size < max_model_len:
            raise ValueError(
                f"a KV cache of {budget} holds {max(num_blocks - 1, 0) * block_size} tokens, fewer than one "
                f"request of max_model_len {max_model_len}: raise {budget.split()[0]} or lower max_model_len")
        self.speculative_config = speculative = SpeculativeConfig.parse(speculative_config)
        if speculative is not None:
            speculative.check_engine(pooling=self.pooler is not None, async_scheduling=async_scheduling)
        self.scheduler = _C.Scheduler(_C.SchedulerConfig(
            num_blocks=num_blocks, block_size=block_size, max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens, max_model_len=max_model_len,
            enable_prefix_caching=enable_prefix_caching, enable_chunked_prefill=enable_chunked_prefill,
            long_prefill_token_threshold=long_prefill_token_threshold,
            **(speculative.scheduler_fields() if speculative is not None else {})))
        kv_caches = allocate_kv_caches(config, self.cache_dtype, num_blocks, block_size, self.device)

        self.eos_token_ids = set(config.eos_token_ids)
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            self.eos_token_ids.add(self.tokenizer.eos_token_id)
        self.grammars = GrammarCompiler(self.tokenizer, config.vocab_size, self.eos_token_ids)
        self.reasoning_parser = reasoning_parser
        if reasoning_parser is not None:
            end = self.tokenizer.backend.token_to_id(THINK_END) if self.tokenizer is not None else None
            if end is None:
                logger.warning("reasoning_parser %s: the tokenizer has no %s token: structured outputs hold the "
                               "whole reply, thinking included", reasoning_parser, THINK_END)
            self.grammars.set_reasoning_end(end)
        # The model's end-of-sequence ids besides the tokenizer's (generation_config.json lists several
        # for Llama 3: <|end_of_text|>, <|eom_id|>, <|eot_id|>): vLLM makes them stop tokens, so a
        # sequence they end reports its stop_reason.
        self.extra_stop_token_ids = (frozenset(self.eos_token_ids) - {self.tokenizer.eos_token_id}
                                     if self.tokenizer is not None and self.tokenizer.eos_token_id is not None
                                     else frozenset())
        if self.device.type == "cuda":
            from kvserve.gpu.runner import CudaModelRunner

            self.runner = CudaModelRunner(loaded.model, kv_caches, config.vocab_size, sorted(self.eos_token_ids),
                                          self.device, max_decode_batch=min(max_num_seqs, max_num_batched_tokens),
                                          max_model_len=max_model_len, block_size=block_size,
                                          enforce_eager=enforce_eager or self.pooler is not None)
        else:
            self.runner = ModelRunner(loaded.model, kv_caches, config.vocab_size, sorted(self.eos_token_ids),
                                      self.device)
        if async_scheduling is not None and not isinstance(async_scheduling, bool):
            raise ValueError(f"async_scheduling must be True, False or None, got {async_scheduling!r}")
        # A pooling engine's steps are prefills whose one token ends each request: nothing to schedule ahead.
        if self.pooler is not None and async_scheduling:
            raise ValueError("async_scheduling: a pooling engine's steps have nothing to schedule ahead")
        self.async_scheduling = (self.runner.asynchronous and self.pooler is None and speculative is None
                                 if async_scheduling is None else async_scheduling)
        self.requests: dict[str, RequestState] = {}
        self._launched: LaunchedStep | None = None  # launched by the last step(), not applied yet
        self._resampled_share = 0.0  # of the sampled rows of recent steps (RESAMPLED_SHARE_LIMIT)
        self._unreported: list[RequestOutput] = []  # outputs step() could not return (it raised)
        self._request_counter = itertools.count()
        self._fan_outs = FanOuts()  # requests of n > max_num_seqs, run as several (kvserve.fan_out)
        self.last_step_num_tokens = 0  # the tokens of the step the last step() call launched
        logger.info("loaded %s (%s, %s) on %s in %.1f s; KV cache (%s): %d blocks of %d tokens = %d tokens",
                    loaded.path, config.architecture, str(self.dtype).removeprefix("torch."), self.device,
                    time.perf_counter() - start, str(self.cache_dtype).removeprefix("torch."), num_blocks - 1,
                    block_size, (num_blocks - 1) * block_size)
        if speculative is not None:
            logger.info("%s", speculative.describe())

    # ---- the low-level loop -------------------------------------------------------------------

    def default_sampling_params(self) -> SamplingParams:
        """The checkpoint's generation_config.json defaults (temperature, top_p, ...), as vLLM uses
        them (none with generation_config="vllm")."""
        return SamplingParams(**self.model_config.default_sampling)

    def get_default_sampling_params(self) -> SamplingParams:
        """vLLM's name for default_sampling_params()."""
        return self.default_sampling_params()

    def get_tokenizer(self) -> Tokenizer:
        """The engine's Tokenizer (tokenizer.py): transformers' common calls work on it, but it is
        not a transformers tokenizer. ValueError when built with skip_tokenizer_init=True."""
        if self.tokenizer is None:
            raise ValueError("the engine was built with skip_tokenizer_init=True: it has no tokenizer")
        return self.tokenizer

    def add_request(self, request_id: str, prompt: PromptInput, params: SamplingParams | PoolingParams | None = None,
                    *, arrival_time: float | None = None, priority: int = 0,
                    lora_request: LoRARequest | None = None) -> None:
        """Queue one request. ValueError for a duplicate id, a bad prompt, or one that can't fit.
        All or nothing: a request that raises leaves nothing behind, in Python or the scheduler.
        `lora_request`: the LoRA adapter it runs with (an engine built with enable_lora); its
        prefix-cache blocks are apart from the base model's and other adapters'. A pooling
        engine's requests take PoolingParams (None: the defaults), a generating engine's
        SamplingParams."""
        if not isinstance(request_id, str):
            raise ValueError(f"request_id must be a str, got {type(request_id).__name__} {request_id!r}")
        if self.has_request(request_id):
            raise ValueError(f"request_id {request_id!r} is already in use")
        if not is_int(priority) or not INT32_MIN <= priority <= INT32_MAX:
            raise ValueError(f"priority must be an integer in [-2**31, 2**31 - 1], got {priority!r}")
        if priority != 0 and self.scheduling_policy != "priority":
            raise ValueError(f"priority {priority} needs scheduling_policy 'priority' (--scheduling-policy "
                             f"priority): the engine runs requests in arrival order")
        arrival_time = time.time() if arrival_time is None else arrival_time
        if self.pooler is not None or isinstance(params, PoolingParams):
            self._add_pooling_request(request_id, prompt, params, arrival_time, priority, lora_request)
            return
        params = params if params is not None else self.default_sampling_params()
        if self.extra_stop_token_ids and not params.ignore_eos and not self.extra_stop_token_ids <= set(
                params.stop_token_ids):
            params = dataclasses.replace(params, stop_token_ids=sorted({*params.stop_token_ids,
                                                                        *self.extra_stop_token_ids}))
        [(text, token_ids, cache_salt)] = normalize_prompts(prompt, self.tokenizer)
        # Before everything else, as vLLM: the request is its last truncate_prompt_tokens tokens (the
        # prompt text stays as given, as vLLM's RequestOutput.prompt does).
        token_ids = params.truncated_prompt(token_ids, self.max_model_len)
        params.check_token_ids(self.model_config.vocab_size)
        wanted = params.num_logprobs(self.model_config.vocab_size)
        for name, count in wanted.items():
            if count > self.max_logprobs:
                raise ValueError(f"{name} asks for {count} log-probabilities a position, more than max_logprobs "
                                 f"{self.max_logprobs} (--max-logprobs; -1 for the whole vocabulary)")
        if -1 in (params.logprobs, params.prompt_logprobs):
            params = dataclasses.replace(params, **wanted)
        check_prompt_ids(token_ids, self.model_config.vocab_size)
        if params.stop and self.tokenizer is None:
            raise ValueError(f"stop strings {params.stop!r} need the text, but the engine was built with "
                             f"skip_tokenizer_init=True: use stop_token_ids")
        if params.stop and not params.detokenize:
            raise ValueError(f"stop strings {params.stop!r} need the text, which detokenize=False leaves out: use "
                             f"stop_token_ids")
        if params.bad_words and self.tokenizer is None:
            raise ValueError(f"bad_words {params.bad_words!r} need the tokenizer, but the engine was built with "
                             f"skip_tokenizer_init=True")
        grammar = self.grammars.compile(params.structured_outputs) if params.structured_outputs is not None else None
        # As vLLM: at most the room max_model_len leaves (the scheduler stops there anyway), so
        # that any max_tokens fits; min_tokens past that room can't be reached either.
        max_tokens = max(self.max_model_len - len(token_ids), 1)
        if params.max_tokens is not None:
            max_tokens = min(params.max_tokens, max_tokens)
        # A structured output ends where its grammar does (SamplingParams.structured_outputs).
        min_tokens = 0 if params.structured_outputs is not None else min(params.min_tokens, max_tokens)
        lora = self._lora(lora_request)
        if params.n > MAX_N:
            raise ValueError(f"n must be in [1, {MAX_N}] (samples of one request; more than max_num_seqs = "
                             f"{self.max_num_seqs} run as several requests), got {params.n}")
        parts = split(params.n, self.max_num_seqs)
        ids = [request_id] if len(parts) == 1 else [f"{request_id}/{k}" for k in range(len(parts))]
        taken = [i for i in ids if i != request_id and self.has_request(i)]
        if taken:
            raise ValueError(f"request_id {request_id!r}: its n = {params.n} samples run as requests {ids}, and "
                             f"{taken[0]!r} is in use")
        added = []
        try:
            for child_id, (first, count) in zip(ids, parts):
                child = params if len(parts) == 1 else dataclasses.replace(params, n=count)
                # Built before the scheduler knows the request: building it may fail (a tokenizer's error).
                state = RequestState(child_id, text, token_ids, child, self.tokenizer, arrival_time, self.device,
                                     grammar, lora, first_index=first)
                self.scheduler.add_request(
                    child_id, token_ids, max_tokens=max_tokens, min_tokens=min_tokens,
                    eos_token_ids=sorted(self.eos_token_ids), ignore_eos=params.ignore_eos,
                    stop_token_ids=params.stop_token_ids, priority=priority, arrival_time=arrival_time, n=count,
                    cache_salt=_cache_key(lora_request, cache_salt),
                    skip_prefix_cache=params.prompt_logprobs is not None)
                self.requests[child_id] = state
                added.append(child_id)
        except BaseException:
            for child_id in added:
                self.requests.pop(child_id)
                self.scheduler.abort(child_id)
            raise
        if len(parts) > 1:
            self._fan_outs.add(FannedOutRequest(request_id, ids, params.output_kind))

    def _add_pooling_request(self, request_id: str, prompt: PromptInput, params: PoolingParams | None,
                             arrival_time: float, priority: int, lora_request: LoRARequest | None) -> None:
        """add_request's for a pooling engine (kvserve.pooling): the prompt is computed once and
        pooled; its one placeholder token ends it."""
        if self.pooler is None:
            raise ValueError("PoolingParams need a pooling engine (runner='pooling'); this one generates")
        params = PoolingParams() if params is None else params
        if not isinstance(params, PoolingParams):
            raise ValueError(f"a pooling engine's requests take PoolingParams, got {type(params).__name__}")
        self.check_pooling_task(params.task)
        lora = self._lora(lora_request)
        [(text, token_ids, cache_salt)] = normalize_prompts(prompt, self.tokenizer)
        token_ids = params.truncated_prompt(token_ids, self.max_model_len)
        self.check_pooling_prompt(token_ids)
        check_dimensions(params.dimensions, self.model_config)
        placeholder = SamplingParams(max_tokens=1, ignore_eos=True, detokenize=False,
                                     output_kind=RequestOutputKind.FINAL_ONLY)
        state = RequestState(request_id, text, token_ids, placeholder, None, arrival_time, self.device, lora=lora,
                             pooled=PooledState(self.pooler, params, len(token_ids)))
        self.scheduler.add_request(
            request_id, token_ids, max_tokens=1, min_tokens=0, eos_token_ids=[], ignore_eos=True, stop_token_ids=[],
            priority=priority, arrival_time=arrival_time, n=1, cache_salt=_cache_key(lora_request, cache_salt),
            skip_prefix_cache=self.pooler.needs_every_token or params.per_token)
        self.requests[request_id] = state

    def check_pooling_task(self, task: str | None) -> None:
        """ValueError for a pooling task (PoolingParams.task) this engine's model has no head for:
        the classify ones need a classifier, the embed ones a model without one."""
        if task is None or (task in CLASSIFIER_TASKS) == (self.classifier is not None):
            return
        if self.classifier is None:
            raise ValueError(f"task {task!r} needs a classifier's checkpoint (a *ForSequenceClassification "
                             f"architecture); this model embeds: ask for 'embed' or 'token_embed'")
        raise ValueError(f"task {task!r}: this model is a classifier; ask for 'classify' or 'token_classify'")

    def check_pooling_prompt(self, token_ids: list[int]) -> None:
        """ValueError for a prompt a pooling engine cannot take (too long, or ids outside the vocabulary)."""
        if not token_ids or len(token_ids) >= self.max_model_len:
            raise ValueError(f"a prompt to pool must have 1 to {self.max_model_len - 1} tokens (max_model_len "
                             f"{self.max_model_len}, less the placeholder that ends it), got {len(token_ids)}")
        check_prompt_ids(token_ids, self.model_config.vocab_size)

    def _lora(self, lora_request: LoRARequest | None) -> LoRAAdapter | None:
        if lora_request is None:
            return None
        if self.loras is None:
            raise ValueError("lora_request needs an engine built with enable_lora=True")
        return self.loras.get(lora_request)

    def step(self) -> list[RequestOutput]:
        """Run one engine step; returns the outputs of requests that advanced (per output_kind).
        Where steps overlap (a GPU), these are the outputs of the step launched by the previous
        call (module docstring). Any thread may call it, one at a time."""
        # CUDA's current device is the calling thread's: a step made on another thread than the
        # one that built the engine (a server's engine thread) takes the engine's for its duration,
        # which its events, streams and graph replays follow.
        with torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext():
            return self._step()

    def _step(self) -> list[RequestOutput]:
        previous, self._launched = self._launched, None
        self.last_step_num_tokens = 0
        ahead = previous is not None and self.async_scheduling
        applied = launched = None
        if previous is not None and not ahead:
            applied = self._apply(previous)
        try:
            if self.scheduler.has_unfinished_requests():
                launched = self._launch(previous if ahead else None)
            if ahead:
                applied = self._apply(previous, launched)
        except BaseException:
            # The failure ended the requests of every step not applied; the applied one's outputs
            # come with the next call, but for requests aborted in between.
            if applied is not None:
                self._unreported += self._process(applied)
            raise
        if launched is not None and not (self.runner.asynchronous or self.async_scheduling):
            applied, launched = self._apply(launched), None
        # Kept before the text side, which may raise: the next call then applies the step.
        self._launched = launched
        try:
            processed = self._process(applied) if applied is not None else []
        except BaseException:
            # Cut short (Ctrl-C, a detokenizer's error): the requests the scheduler ended with this
            # step end here too, without their last outputs, rather than stay behind forever (a
            # fanned-out request of one of them, whole).
            ended = [r for r in {update.request_id for update in applied.updates} if r not in self.scheduler]
            for request_id in ended:
                self.requests.pop(request_id, None)
            self.abort(self._fan_outs.parents(ended))
            raise
        outputs, self._unreported = self._fan_outs.join(self._unreported + processed), []
        if launched is not None:
            try:
                # After the token ids it reads (its errors come with the result).
                launched.sample(applied.retracted if applied is not None else ())
            except BaseException:
                # Interrupted (Ctrl-C): the launched step ends here, as one that failed to launch,
                # with its requests; the other outputs come with the next call.
                self._unreported, self._launched = outputs, None
                self._fail()
                raise
        return outputs

    def _launch(self, previous: LaunchedStep | None) -> LaunchedStep | None:
        """Schedule and launch the next step (None when it is empty: every running sequence ends
        with the step in flight); `previous`: the step in flight, whose tokens it may decode."""
        try:
            out = self.scheduler.schedule()
            if out.num_reqs == 0:
                return None
            self.last_step_num_tokens = out.num_tokens
            now = time.time()
            if previous is not None and self._resampled_share > RESAMPLED_SHARE_LIMIT:
                previous.settle()
            launched = self.runner.launch(out, self.requests, previous)
        except BaseException:
            self._fail()
            raise
        query_start_loc = seq_lens = None
        for row, request_id in enumerate(out.req_ids):  # after the launch: on a GPU the step is running by now
            state = self.requests[request_id]
            if state.metrics.first_scheduled_time is None:
                state.metrics.first_scheduled_time = now
                if query_start_loc is None:
                    query_start_loc, seq_lens = out.query_start_loc, out.seq_lens
                # A request's first step computes its prompt from the end of its prefix-cache hit:
                # the tokens in the cache before this step are those it found there (vLLM's
                # num_cached_tokens, likewise set once, at the first schedule).
                num_scheduled = int(query_start_loc[row + 1] - query_start_loc[row])
                state.num_cached_tokens = int(seq_lens[row]) - num_scheduled
        return launched

    def _apply(self, launched: LaunchedStep, next_step: LaunchedStep | None = None) -> AppliedStep:
        """Wait for a launched step and hand its tokens to the scheduler (the sequences take them
        in _process). `next_step`: the step scheduled ahead of these tokens, launched already: its
        rows that decoded a token the sampler changed when it settled are retracted."""
        try:
            result = launched.result()
            updates = self.scheduler.update_from_output(result.sampled_token_ids)
            if len(result.sampled_token_ids):
                share = result.num_resampled / len(result.sampled_token_ids)
                self._resampled_share += 0.25 * (share - self._resampled_share)
            retracted = self._retract(result, updates) if next_step is not None else []
        except BaseException:
            self._fail()
            raise
        return AppliedStep(updates, result, time.time(), retracted)

    def _retract(self, result: StepResult, updates) -> list[SequenceState]:
        """Retract the rows of the step in flight that decoded a token of `result` changed since
        (resampled_rows); returns their sequences (their rows draw nothing: LaunchedStep.sample)."""
        resampled = set(result.resampled_rows)
        retracted = []
        for update in updates:
            if (update.sampled_index in resampled and update.finish_reason is None
                    and self.scheduler.retract_in_flight(update.request_id, update.sample_index)):
                retracted.append(self.requests[update.request_id].sequences[update.sample_index])
        return retracted

    def _process(self, applied: AppliedStep) -> list[RequestOutput]:
        decode = self._decode_token if self.tokenizer is not None else None
        return process_step(applied, self.requests, self.scheduler, decode)

    def _fail(self) -> None:
        """A model run failed (an error, Ctrl-C): the requests of every step not applied end,
        freeing their blocks, the prefix cache forgets the blocks those steps were to write, and
        the scheduler closes them, so the engine stays usable (a request fanned out ends whole)."""
        ended = self.scheduler.fail_step()
        for request_id in ended:
            self.requests.pop(request_id, None)
        self._forget_outputs(ended)
        self.abort(self._fan_outs.parents(ended))

    def abort(self, request_ids: str | Sequence[str]) -> None:
        """End requests now and free their KV blocks; ids that already finished are ignored. An
        aborted request gets no more outputs; aborting a fanned-out request's child aborts it whole."""
        request_ids = [request_ids] if isinstance(request_ids, str) else list(request_ids)
        ended = [ended_id for request_id in request_ids for ended_id in self._fan_outs.pop_family(request_id)]
        for request_id in ended:
            if self.requests.pop(request_id, None) is not None:
                self.scheduler.abort(request_id)
        self._forget_outputs(ended)

    def has_request(self, request_id: str) -> bool:
        """Whether a request of this id is unfinished (added, and neither finished nor aborted)."""
        return request_id in self.requests or request_id in self._fan_outs

    def request_ids(self) -> list[str]:
        """The unfinished requests' ids, as they were added (a fanned-out request's own, not its children's)."""
        return [r for r in self.requests if not self._fan_outs.is_child(r)] + self._fan_outs.ids()

    def _forget_outputs(self, request_ids) -> None:
        """Drop the unreported outputs of requests that ended otherwise (aborted, or their step failed)."""
        if self._unreported:
            ended = set(request_ids)
            self._unreported = [output for output in self._unreported if output.request_id not in ended]

    def _close_idle_step(self) -> None:
        """Scheduled ahead, a step launched before the last tokens ended every request is still in
        flight, its rows all void: close it, so that the engine is idle (its outputs, if any, come
        with the next step() call)."""
        while self._launched is not None and not self.scheduler.has_unfinished_requests():
            self._unreported += self.step()

    def has_unfinished_requests(self) -> bool:
        """Whether step() has more to do: requests to run, a launched step to finish, outputs to return."""
        return bool(self._unreported) or self._launched is not None or self.scheduler.has_unfinished_requests()

    def stats(self):
        return self.scheduler.stats()

    def reset_prefix_cache(self) -> bool:
        """vLLM's: drop every prefix-cache entry, so that the next prompts compute from scratch (a
        benchmark's next run starts cold). False, changing nothing, while a request holds KV blocks."""
        return self.scheduler.reset_prefix_cache()

    def lora_requests(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The names of the LoRA adapters of unfinished requests: (running, waiting), each sorted; a
        request runs from its first step on (as vLLM's lora_requests_info counts)."""
        running, waiting = set(), set()
        for state in self.requests.values():
            if state.lora is not None:
                started = state.metrics.first_scheduled_time is not None
                (running if started else waiting).add(state.lora.request.lora_name)
        return tuple(sorted(running)), tuple(sorted(waiting))

    def _decode_token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])
