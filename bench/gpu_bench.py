"""Issue 8's GPU benchmarks, on the Llama-3.1-8B shape with random weights (bfloat16,
load_format="dummy"), each appending JSON lines to --out:

    python bench/gpu_bench.py attention --out R.jsonl   # decode attention against its bandwidth floor;
                                                        # prefill attention against torch's SDPA
    python bench/gpu_bench.py decode --out R.jsonl      # engine steps at batch 1 and 64, 512-token contexts
                                                        # (--splits 1 2 4: with each attention split count)
    python bench/gpu_bench.py offline --out R.jsonl     # 1000 prompts x (256 in, 256 out), all at once
    python bench/gpu_bench.py profile --out R.jsonl --report P.txt
                                                        # where a decode step's GPU time goes, by kernel
    python bench/gpu_bench.py linear --out R.jsonl      # cuBLAS on each projection at batch 1 and 64
                                                        # (and kvserve's few-rows kernel up to 8 rows),
                                                        # against the weight-reading floor
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
import cProfile
import functools
import json
import math
import pstats
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kvserve import Engine, SamplingParams, _C, ops
from kvserve.bench.checkpoint import hf_config
from kvserve.bench.presets import model_preset
from kvserve.kv_cache import kv_bytes_per_token

PRESET = model_preset("8b")
HEADS, KV_HEADS, HEAD_DIM, BLOCK = PRESET.num_attention_heads, PRESET.num_key_value_heads, PRESET.head_dim, 16
DTYPE = torch.bfloat16


def record(path: Path, **fields) -> None:
    fields = {k: round(v, 4) if isinstance(v, float) else v for k, v in fields.items()}
    print(json.dumps(fields), flush=True)
    with path.open("a") as f:
        f.write(json.dumps(fields) + "\n")


def cuda_ms(fn, repeat: int = 30, warmup: int = 3, before=None) -> float:
    """Median milliseconds of fn() by CUDA events; fn(i) gets the repetition index. `before()`, if
    given, is queued ahead of each call, outside the timed span."""
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if before is not None:
            before()
        start.record()
        fn(i)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth() -> float:
    """Bytes per second of a 1 GiB device-to-device copy, reads plus writes."""
    src = torch.randn(2**28, device="cuda")
    dst = torch.empty_like(src)
    ms = cuda_ms(lambda i: dst.copy_(src), repeat=10)
    return 2 * src.numel() * 4 / (ms / 1e3)


def l2_overwriter():
    """A function that overwrites the GPU's whole L2 (twice its size in writes), so that the call timed
    after it finds its code, metadata and data in memory, as a decode step's calls do after a
    layer's weights streamed through the L2."""
    junk = torch.empty(2 * torch.cuda.get_device_properties(0).L2_cache_size, dtype=torch.uint8, device="cuda")
    return lambda: junk.fill_(1)


def graph_ms(call, calls: int) -> float:
    """Milliseconds per call of call(i), i = 0..calls-1, captured in one CUDA graph and replayed: the
    kernels' time as a graphed decode step runs them, without the host's cost per launch. One eager
    round first: cuBLAS and the attention's split workspace allocate outside the capture."""
    for i in range(calls):
        call(i)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            call(i)
    return cuda_ms(lambda i: graph.replay()) / calls


def attention_case(case: str) -> tuple[int, int, int]:
    """"BATCHxCONTEXT" or "BATCHxCONTEXT/TABLE" -> (batch, context, tokens the block table holds)."""
    shape, _, table = case.partition("/")
    try:
        batch, context = (int(n) for n in shape.split("x"))
        return batch, context, max(context, int(table)) if table else context
    except ValueError:
        raise ValueError(f"attention case {case!r}: expected BATCHxCONTEXT or BATCHxCONTEXT/TABLE") from None


def bench_attention(out: Path, cases: list[str], prefill: bool, cache_gib: float = 0.0,
                    splits: list[int] | None = None) -> None:
    """Decode attention for each case "BATCHxCONTEXT" or "BATCHxCONTEXT/TABLE" (a block table that
    holds TABLE tokens, as a decode graph's holds the longest context: the launch splits the keys for
    it), each timed three ways: a call, a call in a graph (back to back: their code and metadata in
    L2), and a call after the L2 was overwritten (as the engine's call finds it); then (with
    `prefill`) prefill attention. With `cache_gib`, the K and V caches take that much
    memory together, and the cases' blocks lie scattered across it, as an engine's do. With `splits`,
    each case again with each of those split counts (ops.paged_attention's num_splits)."""
    bandwidth = copy_bandwidth()
    record(out, name="copy_bandwidth", GB_per_s=bandwidth / 1e9)
    generator = torch.Generator(device="cuda").manual_seed(0)
    block_bytes = BLOCK * KV_HEADS * HEAD_DIM * DTYPE.itemsize
    overwrite_l2 = l2_overwriter()
    for case in cases:
        batch, context, table = attention_case(case)
        blocks_per_req = math.ceil(context / BLOCK)
        table_width = max(blocks_per_req, math.ceil(table / BLOCK))
        kv_bytes = batch * context * KV_HEADS * HEAD_DIM * 2 * DTYPE.itemsize
        sets = max(1, math.ceil(200e6 / kv_bytes))  # rotate over 200 MB of cache: no reads served by L2
        used = sets * batch * blocks_per_req
        num_blocks = max(used + 1, int(cache_gib * 2**30 / (2 * block_bytes)))
        key_cache = torch.empty(num_blocks, BLOCK, KV_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
        value_cache = torch.empty_like(key_cache)
        key_cache.normal_(generator=generator)
        value_cache.normal_(generator=generator)
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
        name += f"_cache{cache_gib:g}GiB" if cache_gib else ""
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


def bench_linear(out: Path, batches: list[int]) -> None:
    """F.linear (cuBLAS) on each projection of a decoder layer and on the LM head, replayed from a
    CUDA graph over 8 layers' worth of weights (beyond the L2), against reading its weight once; at
    batches kvserve's tensor-core kernel takes (up to 8 rows), that kernel too, side by side."""
    bandwidth = copy_bandwidth()
    hidden, inter, heads, kv_heads = PRESET.hidden_size, PRESET.intermediate_size, HEADS, KV_HEADS
    shapes = {"qkv": ((heads + 2 * kv_heads) * HEAD_DIM, hidden), "o": (hidden, heads * HEAD_DIM),
              "gate_up": (2 * inter, hidden), "down": (hidden, inter), "lm_head": (PRESET.vocab_size, hidden)}
    for name, (n, k) in shapes.items():
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
            record(out, name=f"linear_{name}_b{batch}", n=n, k=k, ms=ms, floor_ms=floor_ms, ratio=ms / floor_ms,
                   **ours)
        del weights


def bench_layer(out: Path, batches: list[int]) -> None:
    """The short kernels between a decoder layer's products, each replayed 32 times from a CUDA graph
    at each batch size: what one costs inside a graphed decode step (at batch 1 mostly launch and
    ramp), the rotary + cache-write fusion against the two kernels it replaces, and the greedy
    sampler's argmax over the vocabulary against torch's."""
    hidden, inter, eps = PRESET.hidden_size, PRESET.intermediate_size, 1e-5
    q_width, kv_width = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    for batch in batches:
        x = torch.randn(batch, hidden, device="cuda", dtype=DTYPE)
        residual, weight = torch.randn_like(x), torch.randn(hidden, device="cuda", dtype=DTYPE)
        qkv = torch.randn(batch, q_width + 2 * kv_width, device="cuda", dtype=DTYPE)
        q, k, v = (t.view(batch, -1, HEAD_DIM) for t in qkv.split([q_width, kv_width, kv_width], dim=-1))
        angles = torch.rand(batch, HEAD_DIM // 2, device="cuda") * 100
        cos, sin = angles.cos().to(DTYPE), angles.sin().to(DTYPE)
        caches = [torch.zeros(batch + 1, BLOCK, KV_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE) for _ in range(2)]
        slots = torch.arange(batch, device="cuda") * BLOCK + 3
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


def dummy_8b_engine(directory: Path, **kwargs) -> Engine:
    (directory / "config.json").write_text(json.dumps(hf_config(PRESET)))
    return Engine(str(directory), dtype="bfloat16", load_format="dummy", skip_tokenizer_init=True, device="cuda",
                  **kwargs)


PROMPT_RNG = np.random.default_rng(0)  # each run's prompts differ: no prefix-cache hits between runs


def decode_runs(engine: Engine, batches: list[int], context: int, steps: int, tag: str,
                modes: tuple[str, ...] | None = None):
    """For each batch size, with the CUDA graphs and eagerly, and with the graphs but each step
    scheduled after the tokens of the one before ("graphs_not_ahead", on trees with async
    scheduling), or only `modes`: `batch` greedy requests of `context` random prompt tokens,
    prefilled, with `steps` tokens left to decode; yields (batch, mode) while they run, then aborts
    them. The engine's graphs and scheduling are restored at the end."""
    graphs = engine.runner.graphs
    ahead = getattr(engine, "async_scheduling", None)
    modes = modes or ("graphs", "eager") + (("graphs_not_ahead",) if ahead else ())
    params = SamplingParams(temperature=0, max_tokens=steps + 1, ignore_eos=True)
    try:
        for batch in batches:
            for mode in modes:
                engine.runner.graphs = None if mode == "eager" else graphs
                if ahead is not None:
                    engine.async_scheduling = ahead and mode != "graphs_not_ahead"
                ids = [f"{tag}-{mode}-{batch}-{i}" for i in range(batch)]
                for request_id, prompt in zip(ids, PROMPT_RNG.integers(10, 31999, (batch, context))):
                    engine.add_request(request_id, {"prompt_token_ids": prompt.tolist()}, params)
                while any(not r.sequences[0].token_ids for r in engine.requests.values()):  # prefill
                    engine.step()
                yield batch, mode
                engine.abort(ids)
    finally:
        engine.runner.graphs = graphs
        if ahead is not None:
            engine.async_scheduling = ahead


def step_ms(engine: Engine, steps: int) -> float:
    """The median ms of `steps` engine steps back to back, as a serving loop runs them: a step's time
    is from the end of the previous step() call (on a GPU, step() returns while the step it
    launched still runs)."""
    times = []
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        engine.step()
        end = time.perf_counter()
        times.append((end - start) * 1e3)
        start = end
    return statistics.median(times)


def bench_decode(out: Path, batches: list[int], context: int, steps: int, splits: list[int] | None) -> None:
    """Decode steps (decode_runs' modes, then the graphed steps captured as one graph a step); with
    `splits`, only the graphed steps, once with each split count forced on the decode attention the
    graphs capture (ops.paged_attention's num_splits; the graphs captured again for each), beside the
    launch's own rule."""
    with tempfile.TemporaryDirectory() as directory:
        engine = dummy_8b_engine(Path(directory), max_num_seqs=max(batches))
    bandwidth = copy_bandwidth()
    model = engine.runner.model
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    weight_bytes -= model.model.embed_tokens.weight.numel() * DTYPE.itemsize  # a lookup reads a few rows only
    per_token = kv_bytes_per_token(engine.model_config, DTYPE)

    def time_runs(suffix: str, modes: tuple[str, ...] | None) -> None:
        for batch, mode in decode_runs(engine, batches, context, steps, "decode" + suffix, modes):
            ms = step_ms(engine, steps - 1)
            floor_ms = (weight_bytes + batch * (context + steps / 2) * per_token) / bandwidth * 1e3
            record(out, name=f"decode_step_b{batch}_ctx{context}_{mode}{suffix}", ms=ms, floor_ms=floor_ms,
                   ratio=ms / floor_ms, tokens_per_s=batch / ms * 1e3)

    if not splits:
        time_runs("", None)
        # The graphed steps again as one graph a step, beside the two above: the split into two was
        # made for steps the host launched between two others; scheduled ahead it may not pay.
        from kvserve.gpu import graphs as decode_graphs
        pieces = getattr(decode_graphs, "FIRST_PIECE_LAYERS", None)
        if pieces is not None:
            decode_graphs.FIRST_PIECE_LAYERS = len(engine.runner.graphs.kv_caches)  # read at capture
            try:
                engine.runner.graphs.capture()
            finally:
                decode_graphs.FIRST_PIECE_LAYERS = pieces
            time_runs("_one_graph", ("graphs",))
        return
    rule = ops.paged_attention
    for count in [None] + splits:
        ops.paged_attention = functools.partial(rule, num_splits=count)  # read by every layer's call
        try:
            engine.runner.graphs.capture()
        finally:
            ops.paged_attention = rule  # prefill steps keep the launch's rule
        time_runs(f"_splits{count or 'rule'}", ("graphs",))


# Kernel name fragments -> the part of a decode step they do (the first match wins).
KERNEL_PARTS = [
    ("attention", ("attention_mma_kernel", "attention_portable_kernel")),
    ("rotary (+ cache write)", ("rotary_kernel",)),
    ("cache write", ("reshape_and_cache",)),
    ("rms norm", ("rms_norm",)),
    ("silu and mul", ("silu_and_mul",)),
    ("sampler (argmax)", ("argmax",)),
    ("linear (kvserve)", ("linear_kernel",)),
    ("linear (cuBLAS)", ("gemm", "gemv", "nvjet", "cutlass", "xmma", "splitk", "cublas")),
    ("copies", ("memcpy", "memset")),
]


def kernel_part(name: str) -> str:
    lowered = name.lower()
    for part, fragments in KERNEL_PARTS:
        if any(f in lowered for f in fragments):
            return part
    return "other (torch)"


def gpu_activity(prof) -> list[tuple[str, float, float]]:
    """(name, start, duration) in microseconds of every kernel, copy and memset in a finished
    torch.profiler run, read from its Chrome trace (a stable format across torch versions)."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text())["traceEvents"]
    return [(e["name"], float(e["ts"]), float(e["dur"])) for e in events
            if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]


def exclusive_times(activity: list[tuple[str, float, float]]) -> list[tuple[str, float]]:
    """(name, microseconds) of each activity's time that no activity started before it covered. With
    programmatic dependent launch a kernel starts while the one before it still runs, and its
    duration counts that wait; what is left is its own share of the step. The sum is the time the
    GPU was busy (the union of the intervals)."""
    times, covered_until = [], float("-inf")
    for name, start, duration in sorted(activity, key=lambda a: a[1]):
        end = start + duration
        times.append((name, max(0.0, end - max(start, covered_until))))
        covered_until = max(covered_until, end)
    return times


def host_profile(engine: Engine, steps: int) -> list[str]:
    """Where the host's time goes in `steps` engine steps, by function (cProfile, own time, which
    inflates short calls): the Python and C++ calls around the GPU's work, and the wait for it."""
    profiler = cProfile.Profile()
    torch.cuda.synchronize()
    profiler.enable()
    for _ in range(steps):
        engine.step()
    torch.cuda.synchronize()
    profiler.disable()
    functions = sorted(pstats.Stats(profiler).stats.items(), key=lambda kv: -kv[1][2])[:15]
    return ["ms/step  calls/step  host function (cProfile, own time)"] + [
        f"{own * 1e3 / steps:7.3f}  {calls / steps:10.1f}  {Path(file).name}:{line}({function})"
        for (file, line, function), (_, calls, own, _, _) in functions]


def bench_profile(out: Path, report: Path, batches: list[int], context: int, steps: int) -> None:
    """Decode steps under torch.profiler (CUDA activity only): GPU busy time against wall time, split
    by part, and the kernels that take the most time; graphs on and off; then, with graphs, the
    host's time by function (what the GPU waits for between steps)."""
    with tempfile.TemporaryDirectory() as directory:
        engine = dummy_8b_engine(Path(directory), max_num_seqs=max(batches))
    lines = []
    for batch, mode in decode_runs(engine, batches, context, 2 * steps + 1, "profile"):
        engine.step()  # warm-up outside the profile
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            start = time.perf_counter()
            for _ in range(steps):
                engine.step()
            torch.cuda.synchronize()
            wall_ms = (time.perf_counter() - start) * 1e3 / steps
        activity = gpu_activity(prof)
        exclusive = exclusive_times(activity)
        busy_ms = sum(us for _, us in exclusive) / 1e3 / steps
        overlap_ms = sum(duration for _, _, duration in activity) / 1e3 / steps - busy_ms
        parts: dict[str, float] = {}
        kernels: dict[str, list[float]] = {}
        for kernel, us in exclusive:
            part = kernel_part(kernel)
            parts[part] = parts.get(part, 0.0) + us / 1e3 / steps
            kernels.setdefault(kernel, []).append(us)
        name = f"profile_b{batch}_ctx{context}_{mode}"
        record(out, name=name, wall_ms=wall_ms, gpu_busy_ms=busy_ms, overlap_ms=overlap_ms,
               kernels_per_step=len(activity) / steps, parts_ms={k: round(v, 4) for k, v in parts.items()})
        lines += [f"== {name}: {wall_ms:.2f} ms a step (profiled), GPU busy {busy_ms:.2f} ms, "
                  f"{len(activity) / steps:.0f} kernels a step, {overlap_ms:.2f} ms of their durations overlapped "
                  "(times below: each kernel's share not covered by one started before it)", "ms/step  part"]
        lines += [f"{ms:7.3f}  {part}" for part, ms in sorted(parts.items(), key=lambda kv: -kv[1])]
        lines.append("ms/step  calls/step  mean us  kernel")
        top = sorted(kernels.items(), key=lambda kv: -sum(kv[1]))[:20]
        lines += [f"{sum(v) / 1e3 / steps:7.3f}  {len(v) / steps:10.1f}  {statistics.mean(v):7.1f}  {k[:150]}"
                  for k, v in top]
        if mode == "graphs":
            lines += host_profile(engine, steps)
        lines.append("")
    report.write_text("\n".join(lines))
    print("\n".join(lines), flush=True)


def bench_offline(out: Path, num_prompts: int, input_len: int, output_len: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        engine = dummy_8b_engine(Path(directory))
    prompts = np.random.default_rng(0).integers(10, 31999, (num_prompts, input_len))
    params = SamplingParams(temperature=0, max_tokens=output_len, min_tokens=output_len, ignore_eos=True)
    engine.generate([{"prompt_token_ids": prompts[0].tolist()}], params, use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outputs = engine.generate([{"prompt_token_ids": p.tolist()} for p in prompts], params, use_tqdm=False)
    seconds = time.perf_counter() - start
    if any(len(o.outputs[0].token_ids) != output_len for o in outputs):
        raise RuntimeError(f"a request did not generate exactly {output_len} tokens")
    goal = {"goal_total_tokens_per_s": 14000} if (num_prompts, input_len, output_len) == (1000, 256, 256) else {}
    record(out, name=f"offline_{num_prompts}x{input_len}in{output_len}out", seconds=seconds,
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
    parser.add_argument("--num-prompts", type=int, default=1000)
    parser.add_argument("--input-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=256)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.what == "attention":
        bench_attention(args.out, args.cases, not args.no_prefill, args.cache_gib, args.splits)
    elif args.what == "decode":
        bench_decode(args.out, args.batches, args.context, args.steps, args.splits)
    elif args.what == "linear":
        bench_linear(args.out, args.batches)
    elif args.what == "layer":
        bench_layer(args.out, args.batches)
    elif args.what == "profile":
        bench_profile(args.out, args.report or args.out.with_suffix(".profile.txt"), args.batches, args.context,
                      min(args.steps, 16))
    else:
        bench_offline(args.out, args.num_prompts, args.input_len, args.output_len)


if __name__ == "__main__":
    main()
