"""Issue 8's GPU benchmarks, on the Llama-3.1-8B shape with random weights (bfloat16,
load_format="dummy"), each appending JSON lines to --out:

    python bench/gpu_bench.py attention --out R.jsonl   # decode attention against its bandwidth floor;
                                                        # prefill attention against torch's SDPA
    python bench/gpu_bench.py decode --out R.jsonl      # engine steps at batch 1 and 64, 512-token contexts
                                                        # (--splits 1 2 4: with each attention split count;
                                                        # --architecture qwen3: Qwen3-8B's shape)
    python bench/gpu_bench.py offline --out R.jsonl     # 1000 prompts x (256 in, 256 out), all at once
                                                        # (attention, decode, offline: --kv-cache-dtype fp8
                                                        # with an fp8 KV cache, rows named _fp8)
    python bench/gpu_bench.py profile --out R.jsonl --report P.txt
                                                        # where a decode step's GPU time goes, by kernel
    python bench/gpu_bench.py linear --out R.jsonl      # cuBLAS on each projection at batch 1 and 64
                                                        # (and kvserve's few-rows kernel up to 8 rows),
                                                        # against the weight-reading floor
                                                        # (linear, decode: --weights uint4|int8|fp8 with
                                                        # the projections as codes, rows named _uint4...)
    python bench/gpu_bench.py layer --out R.jsonl       # the short kernels between the products (and
                                                        # the sampler's argmax), at batch 1 and 64,
                                                        # replayed from a CUDA graph

Floors use the device-to-device copy bandwidth measured in the same process (bytes read + written).
Times are medians of CUDA-event timings (kernels; decode attention also replayed from a CUDA graph,
as the decode step runs it, which leaves out the host's cost per call) or of host-synchronized engine
steps. bench/gpu_check.sh runs them all on a lent GPU; bench/README.md says what has been measured.
"""

from __future__ import annotations

import argparse
import functools
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gpu_common import (ARCHITECTURES, BLOCK, DTYPE, HEAD_DIM, HEADS, KV_HEADS, PRESET, WEIGHTS, copy_bandwidth,
                        cuda_ms, decode_runs, dummy_8b_engine, graph_ms, l2_overwriter, quantize_decoder, record,
                        step_ms, weight_codes)
from gpu_profile import bench_profile
from kvserve import SamplingParams, _C, ops
from kvserve.kv_cache import KV_CACHE_DTYPES, kv_bytes_per_token
from kvserve.models.layers.linear import CUDA_CODES_MAX_ROWS


def attention_case(case: str) -> tuple[int, int, int]:
    """"BATCHxCONTEXT" or "BATCHxCONTEXT/TABLE" -> (batch, context, tokens the block table holds)."""
    shape, _, table = case.partition("/")
    try:
        batch, context = (int(n) for n in shape.split("x"))
        return batch, context, max(context, int(table)) if table else context
    except ValueError:
        raise ValueError(f"attention case {case!r}: expected BATCHxCONTEXT or BATCHxCONTEXT/TABLE") from None


def cache_suffix(kv_cache_dtype: str) -> str:
    """The measurement names' suffix for a KV cache of `kv_cache_dtype` (none for the model's own)."""
    return "" if kv_cache_dtype == "auto" else f"_{kv_cache_dtype}"


def engine_cache_setting(kv_cache_dtype: str) -> dict:
    """dummy_8b_engine's kv_cache_dtype, only when set: a BASELINE tree's Engine may predate it."""
    return {} if kv_cache_dtype == "auto" else {"kv_cache_dtype": kv_cache_dtype}


def random_cache(num_blocks: int, cache_dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """[num_blocks, BLOCK, KV_HEADS, HEAD_DIM] of normal values, rounded to `cache_dtype`; an 8-bit
    cache is filled a slice at a time (torch draws no normal values in 8 bits)."""
    cache = torch.empty(num_blocks, BLOCK, KV_HEADS, HEAD_DIM, device="cuda", dtype=cache_dtype)
    if cache_dtype.itemsize > 1:
        return cache.normal_(generator=generator)
    for start in range(0, num_blocks, 4096):
        part = cache[start:start + 4096]
        part.copy_(torch.randn(part.shape, device="cuda", dtype=DTYPE, generator=generator))
    return cache


def bench_attention(out: Path, cases: list[str], prefill: bool, cache_gib: float = 0.0,
                    splits: list[int] | None = None, kv_cache_dtype: str = "auto") -> None:
    """Decode attention for each case "BATCHxCONTEXT" or "BATCHxCONTEXT/TABLE" (a block table that
    holds TABLE tokens, as a decode graph's holds the longest context: the launch splits the keys for
    it), each timed three ways: a call, a call in a graph (back to back: their code and metadata in
    L2), and a call after the L2 was overwritten (as the engine's call finds it); then (with
    `prefill`) prefill attention. With `cache_gib`, the K and V caches take that much
    memory together, and the cases' blocks lie scattered across it, as an engine's do. With `splits`,
    each case again with each of those split counts (ops.paged_attention's num_splits). With
    `kv_cache_dtype` "fp8" (or "fp8_e5m2"), the caches hold 8-bit floats (the floor counts their bytes)."""
    bandwidth = copy_bandwidth()
    record(out, name="copy_bandwidth", GB_per_s=bandwidth / 1e9)
    generator = torch.Generator(device="cuda").manual_seed(0)
    cache_dtype = KV_CACHE_DTYPES[kv_cache_dtype] or DTYPE
    block_bytes = BLOCK * KV_HEADS * HEAD_DIM * cache_dtype.itemsize
    overwrite_l2 = l2_overwriter()
    for case in cases:
        batch, context, table = attention_case(case)
        blocks_per_req = math.ceil(context / BLOCK)
        table_width = max(blocks_per_req, math.ceil(table / BLOCK))
        kv_bytes = batch * context * KV_HEADS * HEAD_DIM * 2 * cache_dtype.itemsize
        sets = max(1, math.ceil(200e6 / kv_bytes))  # rotate over 200 MB of cache: no reads served by L2
        used = sets * batch * blocks_per_req
        num_blocks = max(used + 1, int(cache_gib * 2**30 / (2 * block_bytes)))
        key_cache = random_cache(num_blocks, cache_dtype, generator)
        value_cache = random_cache(num_blocks, cache_dtype, generator)
        tables = torch.randperm(num_blocks - 1, device="cuda", generator=generator)[:used] + 1
        tables = tables.int().view(sets, batch, blocks_per_req)
        # Columns past the context hold block 0, a valid id the kernel never reads.
        tables = F.pad(tables, (0, table_width - blocks_per_req))
        seq_lens = torch.full((batch,), context, dtype=torch.int32, device="cuda")
        qsl = torch.arange(batch + 1, dtype=torch.int32, device="cuda")
        query = torch.randn(batch, HEADS, HEAD_DIM, device="cuda", dtype=DTYPE, generator=generator)
        result = torch.empty_like(query)
        floor_ms = (kv_bytes + 2 * query.numel() * DTYPE.itemsize) / bandwidth * 1e3
        name = f"decode_attention_b{batch}_ctx{context}" + (f"_table{table}" if table > context else "")
        name += (f"_cache{cache_gib:g}GiB" if cache_gib else "") + cache_suffix(kv_cache_dtype)
        for num_splits in [None] + (splits or []):
            # num_splits only when set: a BASELINE tree's ops may predate it.
            setting = {} if num_splits is None else {"num_splits": num_splits}

            def call(i: int, setting=setting) -> None:
                ops.paged_attention(result, query, key_cache, value_cache, tables[i % sets], seq_lens, qsl,
                                    HEAD_DIM ** -0.5, **setting)

            ms = cuda_ms(call)
            replayed_ms = graph_ms(call, max(sets, 8))
            cold_ms = cuda_ms(call, before=overwrite_l2)
            record(out, name=name + (f"_splits{num_splits}" if num_splits else ""), ms=ms, graph_ms=replayed_ms,
                   cold_ms=cold_ms, floor_ms=floor_ms, ratio=ms / floor_ms, graph_ratio=replayed_ms / floor_ms,
                   cold_ratio=cold_ms / floor_ms, goal_ratio=1.5)
        del key_cache, value_cache
    if prefill:
        bench_prefill_attention(out, generator)


def bench_prefill_attention(out: Path, generator: torch.Generator) -> None:
    """8 prompts of 2048 tokens, causal: our tensor-core kernel over the paged cache against torch's
    SDPA over dense tensors (its flash backend), on the same values."""
    batch, length = 8, 2048
    q = torch.randn(batch, length, HEADS, HEAD_DIM, device="cuda", dtype=DTYPE, generator=generator)
    k = torch.randn(batch, length, KV_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE, generator=generator)
    v = torch.randn_like(k)
    blocks = length // BLOCK
    key_cache = torch.empty(batch * blocks + 1, BLOCK, KV_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
    value_cache = torch.empty_like(key_cache)
    table = (torch.randperm(batch * blocks, device="cuda", generator=generator) + 1).int().view(batch, blocks)
    slots = (table.long()[:, :, None] * BLOCK + torch.arange(BLOCK, device="cuda")).view(-1)
    ops.reshape_and_cache(k.view(-1, KV_HEADS, HEAD_DIM), v.view(-1, KV_HEADS, HEAD_DIM), key_cache, value_cache,
                          slots)
    seq_lens = torch.full((batch,), length, dtype=torch.int32, device="cuda")
    qsl = torch.arange(0, batch * length + 1, length, dtype=torch.int32, device="cuda")
    ours = torch.empty(batch * length, HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
    ours_ms = cuda_ms(lambda i: ops.paged_attention(ours, q.view(-1, HEADS, HEAD_DIM), key_cache, value_cache, table,
                                                    seq_lens, qsl, HEAD_DIM ** -0.5), repeat=10)
    dense = [t.transpose(1, 2) for t in (q, k, v)]
    theirs = F.scaled_dot_product_attention(*dense, is_causal=True, enable_gqa=True)
    sdpa_ms = cuda_ms(lambda i: F.scaled_dot_product_attention(*dense, is_causal=True, enable_gqa=True), repeat=10)
    flops = 4 * batch * HEADS * HEAD_DIM * length * (length + 1) / 2
    expected = theirs.transpose(1, 2).reshape(-1, HEADS, HEAD_DIM).float()
    error = ((ours.float() - expected).norm() / expected.norm()).item()
    record(out, name="prefill_attention_8x2048", ms=ours_ms, tflops=flops / ours_ms / 1e9, sdpa_ms=sdpa_ms,
           sdpa_tflops=flops / sdpa_ms / 1e9, relative_error_vs_sdpa=error)


def rotary_step(qkv: torch.Tensor):
    """What rotary and the cache write take for a step whose qkv product is `qkv` [batch, q | k | v]:
    q, k, v (its views), cos, sin (random angles), the key and value caches and a slot per row."""
    batch = qkv.shape[0]
    q_width, kv_width = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    q, k, v = (t.view(batch, -1, HEAD_DIM) for t in qkv.split([q_width, kv_width, kv_width], dim=-1))
    angles = torch.rand(batch, HEAD_DIM // 2, device="cuda") * 100
    caches = [torch.zeros(batch + 1, BLOCK, KV_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE) for _ in range(2)]
    slots = torch.arange(batch, device="cuda") * BLOCK + 3
    return q, k, v, angles.cos().to(DTYPE), angles.sin().to(DTYPE), caches, slots


def fusion_calls(name: str, x: torch.Tensor, n: int):
    """(fused, unfused) calls of projection `name` with weight w at x's batch, where kvserve fuses the
    kernel after it into the product (qkv: rotary and the cache write; gate_up: SiLU-and-mul); None
    for the other projections."""
    batch = x.shape[0]
    y = torch.empty(batch, n, device="cuda", dtype=DTYPE)
    if name == "gate_up":
        activated = torch.empty(batch, n // 2, device="cuda", dtype=DTYPE)

        def fused(w):
            ops.linear(activated, x, w, silu_and_mul_output=True)

        def unfused(w):
            ops.linear(y, x, w)
            ops.silu_and_mul(activated, y)
        return fused, unfused
    if name == "qkv":
        q, k, v, cos, sin, caches, slots = rotary_step(y)

        def fused(w):
            ops.linear_rotary_and_cache(y, x, w, None, q, k, v, cos, sin, *caches, slots)

        def unfused(w):
            ops.linear(y, x, w)
            ops.rotary_and_cache(q, k, v, cos, sin, *caches, slots)
        return fused, unfused
    return None


def projection_shapes() -> dict[str, tuple[int, int]]:
    """[out_features, in_features] of each product of a decoder layer, and of the LM head."""
    hidden, inter = PRESET.hidden_size, PRESET.intermediate_size
    return {"qkv": ((HEADS + 2 * KV_HEADS) * HEAD_DIM, hidden), "o": (hidden, HEADS * HEAD_DIM),
            "gate_up": (2 * inter, hidden), "down": (hidden, inter), "lm_head": (PRESET.vocab_size, hidden)}


def bench_linear(out: Path, batches: list[int]) -> None:
    """F.linear (cuBLAS) on each projection of a decoder layer and on the LM head, replayed from a
    CUDA graph over 8 layers' worth of weights (beyond the L2), against reading its weight once; at
    batches kvserve's tensor-core kernel takes (up to 8 rows), that kernel too, side by side, and for
    qkv and gate_up the product with the kernel after it fused in against the two kernels."""
    bandwidth = copy_bandwidth()
    for name, (n, k) in projection_shapes().items():
        copies = 1 if name == "lm_head" else 8
        weights = [torch.randn(n, k, device="cuda", dtype=DTYPE) for _ in range(copies)]
        for batch in batches:
            x = torch.randn(batch, k, device="cuda", dtype=DTYPE)
            ms = graph_ms(lambda i: F.linear(x, weights[i]), copies)
            floor_ms = n * k * DTYPE.itemsize / bandwidth * 1e3
            ours = {}
            if batch <= _C.ops.linear_cuda_max_rows:
                y = torch.empty(batch, n, device="cuda", dtype=DTYPE)
                ours_ms = graph_ms(lambda i: ops.linear(y, x, weights[i]), copies)
                ours = {"ours_ms": ours_ms, "ours_ratio": ours_ms / floor_ms}
                calls = fusion_calls(name, x, n)
                if calls is not None:
                    fused, unfused = calls
                    ours.update(fused_ms=graph_ms(lambda i: fused(weights[i]), copies),
                                unfused_ms=graph_ms(lambda i: unfused(weights[i]), copies))
            record(out, name=f"linear_{name}_b{batch}", n=n, k=k, ms=ms, floor_ms=floor_ms, ratio=ms / floor_ms,
                   **ours)
        del weights


def bench_linear_codes(out: Path, batches: list[int], kind: str) -> None:
    """The products over `kind` codes (gpu_common.WEIGHTS) of bench_linear's shapes, replayed the same
    way, against reading the codes and their scales once: the weight widened for cuBLAS
    (ops.dequantize_weight, then F.linear: what more than CUDA_CODES_MAX_ROWS rows take) and kvserve's
    kernels over the codes (ops.linear: the few-rows kernel up to 32 rows, the tiled one past them)
    at every batch: where CUDA_CODES_MAX_ROWS belongs. At many rows `tflops` is the kernel's rate."""
    bandwidth = copy_bandwidth()
    for name, (n, k) in projection_shapes().items():
        copies = 1 if name == "lm_head" else 8
        quantized = [weight_codes(torch.randn(n, k, device="cuda", dtype=DTYPE), kind) for _ in range(copies)]
        floor_ms = sum(t.numel() * t.element_size() for t in quantized[0] if t is not None) / bandwidth * 1e3
        widened = torch.empty(n, k, device="cuda", dtype=DTYPE)
        for batch in batches:
            x = torch.randn(batch, k, device="cuda", dtype=DTYPE)

            def widened_product(i: int):
                ops.dequantize_weight(widened, *quantized[i])
                return F.linear(x, widened)

            ms = graph_ms(widened_product, copies)
            y = torch.empty(batch, n, device="cuda", dtype=DTYPE)
            ours_ms = graph_ms(lambda i: ops.linear(y, x, quantized[i][0], None, weight_scale=quantized[i][1],
                                                    weight_offset=quantized[i][2]), copies)
            record(out, name=f"linear_{name}_b{batch}_{kind}", n=n, k=k, ms=ms, floor_ms=floor_ms,
                   ratio=ms / floor_ms, ours_ms=ours_ms, ours_ratio=ours_ms / floor_ms,
                   ours_tflops=2 * batch * n * k / ours_ms / 1e9, widened_tflops=2 * batch * n * k / ms / 1e9,
                   ours_wins=ours_ms < ms, max_rows=CUDA_CODES_MAX_ROWS)
        del quantized


def bench_layer(out: Path, batches: list[int]) -> None:
    """The short kernels between a decoder layer's products, each replayed 32 times from a CUDA graph
    at each batch size: what one costs inside a graphed decode step (at batch 1 mostly launch and
    ramp), the rotary + cache-write fusion against the two kernels it replaces, and the greedy
    sampler's argmax over the vocabulary against torch's."""
    hidden, inter, eps = PRESET.hidden_size, PRESET.intermediate_size, 1e-5
    for batch in batches:
        x = torch.randn(batch, hidden, device="cuda", dtype=DTYPE)
        residual, weight = torch.randn_like(x), torch.randn(hidden, device="cuda", dtype=DTYPE)
        qkv = torch.randn(batch, (HEADS + 2 * KV_HEADS) * HEAD_DIM, device="cuda", dtype=DTYPE)
        q, k, v, cos, sin, caches, slots = rotary_step(qkv)
        gate_up = torch.randn(batch, 2 * inter, device="cuda", dtype=DTYPE)
        activated = torch.empty(batch, inter, device="cuda", dtype=DTYPE)
        logits = torch.randn(batch, PRESET.vocab_size, device="cuda", dtype=DTYPE)
        sampled = torch.empty(batch, dtype=torch.int32, device="cuda")

        def rotary_then_cache(i: int) -> None:
            ops.rotary_embedding(q, k, cos, sin)
            ops.reshape_and_cache(k, v, *caches, slots)

        kernels = {
            "fused_add_rms_norm": lambda i: ops.fused_add_rms_norm(x, residual, weight, eps),
            "rotary_embedding+reshape_and_cache": rotary_then_cache,
            "rotary_and_cache": lambda i: ops.rotary_and_cache(q, k, v, cos, sin, *caches, slots),
            "silu_and_mul": lambda i: ops.silu_and_mul(activated, gate_up),
            "argmax": lambda i: ops.argmax(sampled, logits),
            "torch.argmax": lambda i: torch.argmax(logits, dim=1),
        }
        for name, call in kernels.items():
            record(out, name=f"layer_{name}_b{batch}", graph_ms=graph_ms(call, 32))


def bench_decode(out: Path, batches: list[int], context: int, steps: int, splits: list[int] | None,
                 modes: tuple[str, ...] | None, architecture: str = "llama", kv_cache_dtype: str = "auto",
                 weights: str = "bf16") -> None:
    """Decode steps in decode_runs' `modes` (all unless given); with `splits`, only the graphed steps,
    once with each split count forced on the decode attention the graphs capture
    (ops.paged_attention's num_splits; the graphs captured again for each), beside the launch's own
    rule. `architecture` "qwen3": Qwen3-8B's shape (rows named with a _qwen3 suffix); `weights`: the
    projections as codes (gpu_common.WEIGHTS; rows named with its suffix)."""
    with tempfile.TemporaryDirectory() as directory:
        engine = dummy_8b_engine(Path(directory), architecture, max_num_seqs=max(batches),
                                 **engine_cache_setting(kv_cache_dtype))
    quantize_decoder(engine, weights)
    bandwidth = copy_bandwidth()
    model = engine.runner.model
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    weight_bytes -= model.model.embed_tokens.weight.numel() * DTYPE.itemsize  # a lookup reads a few rows only
    per_token = kv_bytes_per_token(engine.model_config, getattr(engine, "cache_dtype", DTYPE))

    def time_runs(suffix: str, modes: tuple[str, ...] | None) -> None:
        for batch, mode in decode_runs(engine, batches, context, steps, "decode" + suffix, modes):
            ms = step_ms(engine, steps - 1)
            floor_ms = (weight_bytes + batch * (context + steps / 2) * per_token) / bandwidth * 1e3
            shape = ("" if architecture == "llama" else f"_{architecture}") + cache_suffix(kv_cache_dtype)
            shape += "" if weights == "bf16" else f"_{weights}"
            record(out, name=f"decode_step_b{batch}_ctx{context}_{mode}{suffix}{shape}", ms=ms, floor_ms=floor_ms,
                   ratio=ms / floor_ms, tokens_per_s=batch / ms * 1e3)

    if not splits:
        time_runs("", modes)
        return
    rule = ops.paged_attention
    for count in [None] + splits:
        ops.paged_attention = functools.partial(rule, num_splits=count)  # read by every layer's call
        try:
            engine.runner.graphs.capture()
        finally:
            ops.paged_attention = rule  # prefill steps keep the launch's rule
        time_runs(f"_splits{count or 'rule'}", ("graphs",))


def bench_offline(out: Path, num_prompts: int, input_len: int, output_len: int, kv_cache_dtype: str = "auto") -> None:
    with tempfile.TemporaryDirectory() as directory:
        engine = dummy_8b_engine(Path(directory), **engine_cache_setting(kv_cache_dtype))
    prompts = np.random.default_rng(0).integers(10, 31999, (num_prompts, input_len))
    params = SamplingParams(temperature=0, max_tokens=output_len, min_tokens=output_len, ignore_eos=True)
    engine.generate([{"prompt_token_ids": prompts[0].tolist()}], params, use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outputs = engine.generate([{"prompt_token_ids": p.tolist()} for p in prompts], params, use_tqdm=False)
    seconds = time.perf_counter() - start
    if any(len(o.outputs[0].token_ids) != output_len for o in outputs):
        raise RuntimeError(f"a request did not generate exactly {output_len} tokens")
    goal = {"goal_total_tokens_per_s": 14000} if (num_prompts, input_len, output_len) == (1000, 256, 256) else {}
    config = engine.scheduler.config
    record(out, name=f"offline_{num_prompts}x{input_len}in{output_len}out{cache_suffix(kv_cache_dtype)}",
           seconds=seconds, kv_cache_tokens=(config.num_blocks - 1) * config.block_size,
           total_tokens_per_s=num_prompts * (input_len + output_len) / seconds,
           output_tokens_per_s=num_prompts * output_len / seconds,
           peak_gpu_gib=torch.cuda.max_memory_allocated() / 2**30, **goal)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["attention", "decode", "offline", "profile", "linear", "layer"])
    parser.add_argument("--out", type=Path, required=True, help="JSON lines are appended here")
    parser.add_argument("--report", type=Path, help="profile: the kernel table is written here")
    parser.add_argument("--cases", nargs="+",
                        default=["1x512", "1x512/8192", "1x4096", "64x512", "64x512/8192", "128x2048"],
                        help="attention: decode cases, BATCHxCONTEXT or BATCHxCONTEXT/TABLE_TOKENS")
    parser.add_argument("--no-prefill", action="store_true", help="attention: decode cases only")
    parser.add_argument("--splits", type=int, nargs="+",
                        help="attention: each case again with each of these split counts (num_splits); "
                             "decode: the graphed steps with each split count forced, beside the launch's rule")
    parser.add_argument("--cache-gib", type=float, default=0.0,
                        help="attention: K and V caches of this many GiB together, the cases' blocks scattered "
                             "across them (an engine's cache fills the GPU)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--modes", nargs="+", choices=["graphs", "eager", "graphs_not_ahead"],
                        help="decode: only these of the engine's step modes")
    parser.add_argument("--architecture", choices=list(ARCHITECTURES), default="llama",
                        help="decode: Llama-3.1-8B's shape or Qwen3-8B's")
    parser.add_argument("--num-prompts", type=int, default=1000)
    parser.add_argument("--input-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--kv-cache-dtype", choices=list(KV_CACHE_DTYPES), default="auto",
                        help="attention, decode, offline: the KV cache's dtype (vLLM's kv_cache_dtype)")
    parser.add_argument("--weights", choices=list(WEIGHTS), default="bf16",
                        help="linear, decode: the projections' weights in bfloat16 or as quantized codes")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.what == "attention":
        bench_attention(args.out, args.cases, not args.no_prefill, args.cache_gib, args.splits, args.kv_cache_dtype)
    elif args.what == "decode":
        bench_decode(args.out, args.batches, args.context, args.steps, args.splits,
                     tuple(args.modes) if args.modes else None, args.architecture, args.kv_cache_dtype, args.weights)
    elif args.what == "linear" and args.weights != "bf16":
        bench_linear_codes(args.out, args.batches, args.weights)
    elif args.what == "linear":
        bench_linear(args.out, args.batches)
    elif args.what == "layer":
        bench_layer(args.out, args.batches)
    elif args.what == "profile":
        bench_profile(args.out, args.report or args.out.with_suffix(".profile.txt"), args.batches, args.context,
                      min(args.steps, 16))
    else:
        bench_offline(args.out, args.num_prompts, args.input_len, args.output_len, args.kv_cache_dtype)


if __name__ == "__main__":
    main()
