"""CPU attention kernels against the torch path and the memory-bandwidth floor.

    python bench/kernels.py                 # every table of bench/README.md's "kernels" section
    python bench/kernels.py --only decode   # one of: decode, prefill, short, fp8, overhead, threads

The torch path is what a model would run without kvserve's kernels: gather each request's K/V from
the paged cache through its block table, then torch's scaled_dot_product_attention (GQA, causal).
The floor is the KV bytes a call must read divided by this machine's measured copy bandwidth. Like
a model's layers, successive calls read different caches (LAYERS of them, together larger than the
L3 cache), so no call finds its K/V left in cache by the previous one.
Times are the minimum over repeated calls after a warm-up: on a machine shared with other jobs the
minimum is the run nobody preempted, the median is mostly noise. Run nothing else heavy meanwhile.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from torch.utils.dlpack import to_dlpack

from kvserve import _C, ops
from kvserve.bench.machine import call_seconds

HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE = 14, 2, 64, 16  # the 0.5b preset's attention shape
LAYERS = 8


def timed(fn, repeat=50, warmup=3) -> float:
    """Seconds of the fastest of `repeat` calls."""
    return min(call_seconds(fn, repeat, warmup))


def copy_bandwidth() -> float:
    """Bytes per second read by a large tensor copy (torch's threads), the floor's yardstick."""
    src = torch.empty(64 << 20, dtype=torch.float32).uniform_()  # 256 MiB, far beyond the caches
    dst = torch.empty_like(src)
    return src.numel() * 4 / timed(lambda: dst.copy_(src), repeat=10)


class Batch:
    """num_reqs requests with `new` query tokens each over a context of `context` tokens."""

    def __init__(self, num_reqs, new, context, dtype, heads=HEADS, kv_heads=KV_HEADS, head_dim=HEAD_DIM,
                 layers=1, cache_dtype=None):
        blocks_per_req = -(-context // BLOCK_SIZE)
        num_blocks = num_reqs * blocks_per_req
        gen = torch.Generator().manual_seed(0)
        shape = (num_blocks, BLOCK_SIZE, kv_heads, head_dim)
        cache_dtype = cache_dtype or dtype
        self.caches = [(torch.randn(shape, generator=gen).to(cache_dtype),
                        torch.randn(shape, generator=gen).to(cache_dtype)) for _ in range(layers)]
        self.layer = 0
        self.block_table = torch.randperm(num_blocks, generator=gen).int().view(num_reqs, blocks_per_req)
        self.seq_lens = torch.full((num_reqs,), context, dtype=torch.int32)
        self.query_start_loc = torch.arange(0, (num_reqs + 1) * new, new, dtype=torch.int32)
        self.query = torch.randn(num_reqs * new, heads, head_dim, generator=gen).to(dtype)
        self.out = torch.empty_like(self.query)
        self.num_reqs, self.new, self.context = num_reqs, new, context
        self.scale = head_dim ** -0.5
        self.kv_bytes = 2 * num_reqs * context * kv_heads * head_dim * self.caches[0][0].element_size()
        # Causal (query, key) pairs x heads x (QK^T + PV) x (multiply + add).
        first = context - new
        pairs = sum(first + j + 1 for j in range(new))
        self.flops = num_reqs * pairs * heads * head_dim * 4

    def next_layer(self):
        self.layer = (self.layer + 1) % len(self.caches)
        return self.caches[self.layer]

    def kvserve(self):
        key_cache, value_cache = self.next_layer()
        ops.paged_attention(self.out, self.query, key_cache, value_cache, self.block_table,
                            self.seq_lens, self.query_start_loc, self.scale)

    def torch_path(self):
        """Gather + SDPA: every request has the same lengths here, so one batched call."""
        b, n, length = self.num_reqs, self.new, self.context
        key_cache, value_cache = self.next_layer()
        k = key_cache[self.block_table].flatten(1, 2)[:, :length].transpose(1, 2)  # [b, kv, L, d]
        v = value_cache[self.block_table].flatten(1, 2)[:, :length].transpose(1, 2)
        q = self.query.view(b, n, *self.query.shape[1:]).transpose(1, 2)  # [b, h, n, d]
        # Causal with the queries at the end of the context (== plain causal when n == length).
        mask = None
        if n > 1 and n != length:
            mask = torch.ones(n, length, dtype=torch.bool).tril(length - n)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=n > 1 and n == length,
                                           scale=self.scale, enable_gqa=True)
        self.out.copy_(o.transpose(1, 2).reshape_as(self.out))


def table(title, header, rows):
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def bench_decode_prefill(kind, bandwidth):
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        batch = Batch(64, 1, 1024, dtype, layers=LAYERS) if kind == "decode" else Batch(4, 512, 512, dtype)
        t_ours = timed(batch.kvserve)
        t_torch = timed(batch.torch_path, repeat=10)
        floor = batch.kv_bytes / bandwidth
        rows.append([str(dtype).removeprefix("torch."), f"{t_ours * 1e3:.3f}", f"{t_torch * 1e3:.3f}",
                     f"{t_torch / t_ours:.1f}x", f"{floor * 1e3:.3f}", f"{t_ours / floor:.2f}x",
                     f"{batch.flops / t_ours / 1e9:.0f}"])
    shape = ("64 requests x 1 new token, context 1024" if kind == "decode"
             else "4 requests x 512 new tokens (causal prefill)")
    table(f"{kind}: {shape}, {HEADS} heads / {KV_HEADS} kv heads, head_dim {HEAD_DIM}, "
          f"block_size {BLOCK_SIZE}",
          ["dtype", "kvserve ms", "torch ms", "speed-up", "floor ms", "kvserve / floor", "GFLOP/s"], rows)


# The decode steps that bench/profile_step.py profiles: (requests, context, heads, kv heads).
SHORT_DECODES = [(256, 96, 4, 2), (64, 190, 8, 4)]


def bench_short(bandwidth):
    """Decode at the short contexts of the offline cases (tiny's and small's attention shapes)."""
    rows = []
    for num_reqs, context, heads, kv_heads in SHORT_DECODES:
        batch = Batch(num_reqs, 1, context, torch.bfloat16, heads=heads, kv_heads=kv_heads, layers=LAYERS)
        t_ours = timed(batch.kvserve)
        floor = batch.kv_bytes / bandwidth
        rows.append([f"{num_reqs} x {context}, {heads} / {kv_heads} heads", f"{t_ours * 1e3:.3f}",
                     f"{floor * 1e3:.3f}", f"{t_ours / floor:.2f}x"])
    table("short decode: 1 new token per request, bfloat16, head_dim 64, block_size 16",
          ["requests x context", "kvserve ms", "floor ms", "kvserve / floor"], rows)


def bench_fp8(bandwidth):
    """Decode over caches of the model's dtype and of 8-bit floats (kv_cache_dtype fp8): a half or a
    quarter of the bytes, a conversion per element."""
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        for num_reqs, context in ((64, 1024), (16, 4096)):
            base = None
            for cache_dtype in (dtype, torch.float8_e4m3fn, torch.float8_e5m2):
                batch = Batch(num_reqs, 1, context, dtype, layers=LAYERS, cache_dtype=cache_dtype)
                t_ours = timed(batch.kvserve)
                base = base or t_ours
                floor = batch.kv_bytes / bandwidth
                rows.append([str(dtype).removeprefix("torch."), f"{num_reqs} x {context}",
                             str(cache_dtype).removeprefix("torch."), f"{t_ours * 1e3:.3f}", f"{base / t_ours:.2f}x",
                             f"{floor * 1e3:.3f}", f"{t_ours / floor:.2f}x"])
    table(f"fp8 decode: 1 new token per request, {HEADS} heads / {KV_HEADS} kv heads, head_dim {HEAD_DIM}, "
          f"block_size {BLOCK_SIZE}",
          ["queries", "requests x context", "cache", "kvserve ms", "vs the queries' dtype", "floor ms",
           "kvserve / floor"], rows)


def bench_overhead():
    """Per-call cost on the tiny preset's decode shapes (4 heads / 2 kv heads, head_dim 64)."""
    one = Batch(1, 1, 1, torch.float32, heads=4, kv_heads=2)
    tensors = (one.out, one.query, *one.caches[0], one.block_table, one.seq_lens, one.query_start_loc)
    key = torch.randn(1, 2, 64)
    slot = torch.zeros(1, dtype=torch.int64)
    tiny = Batch(256, 1, 128, torch.float32, heads=4, kv_heads=2, layers=4)
    us = lambda fn, n=2000: f"{timed(fn, n, 50) * 1e6:.1f}"  # noqa: E731
    rows = [
        ["ops.paged_attention, 1 request, context 1", us(one.kvserve)],
        ["  of which 7 x torch.utils.dlpack.to_dlpack", us(lambda: [to_dlpack(t) for t in tensors])],
        ["  the same call passing tensors (nanobind calls __dlpack__)",
         us(lambda: _C.ops.paged_attention(*tensors, one.scale, True, None, None), 500)],
        ["ops.reshape_and_cache, 1 token", us(lambda: ops.reshape_and_cache(key, key, *one.caches[0], slot))],
        ["ops.paged_attention, 256 requests, context 128", us(tiny.kvserve, 200)],
    ]
    table("overhead: one call on the tiny preset's decode shapes (4 heads / 2 kv heads, head_dim 64, "
          "float32)", ["call", "us"], rows)


def bench_threads():
    """A model-like loop: a torch matmul (torch's OpenMP team), then our kernel, per layer."""
    threads = torch.get_num_threads()
    rows = []
    for name, batch, mm_rows in (("decode 64 x 1024", Batch(64, 1, 1024, torch.bfloat16, layers=LAYERS), 64),
                                 ("prefill 4 x 512", Batch(4, 512, 512, torch.bfloat16), 2048)):
        x = torch.randn(mm_rows, 896, dtype=torch.bfloat16)
        w = torch.randn(896, 896, dtype=torch.bfloat16)

        def layer():
            torch.mm(x, w)
            batch.kvserve()

        for n in (threads, 1):
            torch.set_num_threads(n)
            rows.append([name, str(n), f"{timed(lambda: torch.mm(x, w)) * 1e3:.3f}",
                         f"{timed(batch.kvserve) * 1e3:.3f}", f"{timed(layer, 200) * 1e3:.3f}"])
        torch.set_num_threads(threads)
    table("threads: torch.mm [rows x 896] x [896 x 896] then paged_attention, bfloat16, ms",
          ["shape", "threads", "mm alone", "attention alone", "mm + attention"], rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["decode", "prefill", "short", "fp8", "overhead", "threads"])
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"kvserve kernels on {_C.ops.cpu_isa()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    if args.only in (None, "decode", "prefill", "short", "fp8"):
        bandwidth = copy_bandwidth()
        print(f"copy bandwidth: {bandwidth / 1e9:.1f} GB/s read")
        for kind in ("decode", "prefill"):
            if args.only in (None, kind):
                bench_decode_prefill(kind, bandwidth)
        if args.only in (None, "short"):
            bench_short(bandwidth)
        if args.only in (None, "fp8"):
            bench_fp8(bandwidth)
    if args.only in (None, "overhead"):
        bench_overhead()
    if args.only in (None, "threads"):
        bench_threads()


if __name__ == "__main__":
    main()
