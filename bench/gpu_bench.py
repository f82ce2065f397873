"""Issue 8's GPU benchmarks, on the Llama-3.1-8B shape with random weights (bfloat16,
load_format="dummy"), each appending JSON lines to --out:

    python bench/gpu_bench.py attention --out R.jsonl   # decode attention against its bandwidth floor;
                                                        # prefill attention against torch's SDPA
    python bench/gpu_bench.py decode --out R.jsonl      # engine steps at batch 1 and 64, 512-token contexts
    python bench/gpu_bench.py offline --out R.jsonl     # 1000 prompts x (256 in, 256 out), all at once

Floors use the device-to-device copy bandwidth measured in the same process (bytes read + written).
Times are medians of CUDA-event timings (kernels) or of host-synchronized engine steps. bench/gpu_check.sh
runs all three on a lent GPU; bench/README.md says what has been measured.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kvserve import Engine, SamplingParams, ops
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


def cuda_ms(fn, repeat: int = 30, warmup: int = 3) -> float:
    """Median milliseconds of fn() by CUDA events; fn(i) gets the repetition index."""
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
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


def bench_attention(out: Path) -> None:
    bandwidth = copy_bandwidth()
    record(out, name="copy_bandwidth", GB_per_s=bandwidth / 1e9)
    generator = torch.Generator(device="cuda").manual_seed(0)
    for batch, context in [(1, 4096), (64, 512), (128, 2048)]:
        blocks_per_req = math.ceil(context / BLOCK)
        kv_bytes = batch * context * KV_HEADS * HEAD_DIM * 2 * DTYPE.itemsize
        sets = max(1, math.ceil(200e6 / kv_bytes))  # rotate over 200 MB of cache: no reads served by L2
        num_blocks = sets * batch * blocks_per_req + 1
        key_cache = torch.randn(num_blocks, BLOCK, KV_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE, generator=generator)
        value_cache = torch.randn_like(key_cache)
        tables = torch.randperm(num_blocks - 1, device="cuda", generator=generator)[:sets * batch * blocks_per_req] + 1
        tables = tables.int().view(sets, batch, blocks_per_req)
        seq_lens = torch.full((batch,), context, dtype=torch.int32, device="cuda")
        qsl = torch.arange(batch + 1, dtype=torch.int32, device="cuda")
        query = torch.randn(batch, HEADS, HEAD_DIM, device="cuda", dtype=DTYPE, generator=generator)
        result = torch.empty_like(query)
        ms = cuda_ms(lambda i: ops.paged_attention(result, query, key_cache, value_cache, tables[i % sets], seq_lens,
                                                   qsl, HEAD_DIM ** -0.5))
        floor_ms = (kv_bytes + 2 * query.numel() * DTYPE.itemsize) / bandwidth * 1e3
        record(out, name=f"decode_attention_b{batch}_ctx{context}", ms=ms, floor_ms=floor_ms, ratio=ms / floor_ms,
               goal_ratio=1.5)
        del key_cache, value_cache
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


def dummy_8b_engine(directory: Path, **kwargs) -> Engine:
    (directory / "config.json").write_text(json.dumps(hf_config(PRESET)))
    return Engine(str(directory), dtype="bfloat16", load_format="dummy", skip_tokenizer_init=True, device="cuda",
                  **kwargs)


def bench_decode(out: Path, batches: list[int], context: int, steps: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        engine = dummy_8b_engine(Path(directory), max_num_seqs=max(batches))
    bandwidth = copy_bandwidth()
    model = engine.runner.model
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    weight_bytes -= model.model.embed_tokens.weight.numel() * DTYPE.itemsize  # a lookup reads a few rows only
    per_token = kv_bytes_per_token(engine.model_config, DTYPE)
    rng = np.random.default_rng(0)
    graphs = engine.runner.graphs
    for batch in batches:
        for mode in ("graphs", "eager"):
            engine.runner.graphs = graphs if mode == "graphs" else None
            params = SamplingParams(temperature=0, max_tokens=steps + 1, ignore_eos=True)
            ids = [f"{mode}-{batch}-{i}" for i in range(batch)]
            for request_id, prompt in zip(ids, rng.integers(10, 31999, (batch, context))):
                engine.add_request(request_id, {"prompt_token_ids": prompt.tolist()}, params)
            while any(not r.sequences[0].token_ids for r in engine.requests.values()):  # prefill
                engine.step()
            times = []
            for _ in range(steps - 1):
                torch.cuda.synchronize()
                start = time.perf_counter()
                engine.step()
                times.append((time.perf_counter() - start) * 1e3)
            engine.abort(ids)
            ms = statistics.median(times)
            floor_ms = (weight_bytes + batch * (context + steps / 2) * per_token) / bandwidth * 1e3
            record(out, name=f"decode_step_b{batch}_ctx{context}_{mode}", ms=ms, floor_ms=floor_ms,
                   ratio=ms / floor_ms, tokens_per_s=batch / ms * 1e3)
    engine.runner.graphs = graphs


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
    record(out, name=f"offline_{num_prompts}x{input_len}in{output_len}out", seconds=seconds,
           total_tokens_per_s=num_prompts * (input_len + output_len) / seconds,
           output_tokens_per_s=num_prompts * output_len / seconds, goal_total_tokens_per_s=14000,
           peak_gpu_gib=torch.cuda.max_memory_allocated() / 2**30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["attention", "decode", "offline"])
    parser.add_argument("--out", type=Path, required=True, help="JSON lines are appended here")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--num-prompts", type=int, default=1000)
    parser.add_argument("--input-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=256)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.what == "attention":
        bench_attention(args.out)
    elif args.what == "decode":
        bench_decode(args.out, args.batches, args.context, args.steps)
    else:
        bench_offline(args.out, args.num_prompts, args.input_len, args.output_len)


if __name__ == "__main__":
    main()
