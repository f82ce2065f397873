"""Cost of one scheduler step through Python: schedule() + reading the arrays a model runner reads
+ update_from_output(), with an (untimed) fake model. Same scenarios as bench/scheduler_bench.cpp.

    python bench/scheduler_bench.py [--steps N]
"""

import argparse
import time

import numpy as np

from kvserve import _C

# name, running sequences, prompt length, max_tokens (0: never finishes in the run), replace finished
SCENARIOS = [
    ("decode-256", 256, 128, 0, False),
    ("decode-1024", 1024, 128, 0, False),
    ("mixed-256", 256, 512, 128, True),
]
WARMUP = 64


def run(num_seqs, prompt_len, max_tokens, replace, steps, read_arrays):
    max_tokens = max_tokens or WARMUP + steps + 64
    max_model_len = prompt_len + max_tokens
    config = _C.SchedulerConfig(
        num_blocks=num_seqs * -(-max_model_len // 16) + 1,
        block_size=16,
        max_num_seqs=num_seqs,
        max_num_batched_tokens=8192,
        max_model_len=max_model_len,
    )
    sched = _C.Scheduler(config)
    rng = np.random.default_rng(0)
    next_id = 0

    def add():
        nonlocal next_id
        prompt = rng.integers(10, 31999, prompt_len, dtype=np.int32)
        sched.add_request(f"req-{next_id}", prompt, max_tokens=max_tokens, ignore_eos=True)
        next_id += 1

    for _ in range(num_seqs):
        add()
    times, tokens = [], 0
    for step in range(WARMUP + steps):
        start = time.perf_counter()
        out = sched.schedule()
        input_ids = out.input_ids
        logits_indices = out.logits_indices
        if read_arrays:
            (out.positions, out.slot_mapping, out.query_start_loc, out.seq_lens, out.block_table,
             out.blocks_to_copy, out.req_ids)
        scheduled = time.perf_counter()
        sampled = (input_ids[logits_indices] * 7 + 1) % 32000  # the fake model: not timed
        model_done = time.perf_counter()
        results = sched.update_from_output(sampled)
        elapsed = scheduled - start + time.perf_counter() - model_done
        if step >= WARMUP:
            times.append(elapsed * 1e6)
            tokens += out.num_tokens
        if replace:
            for _ in range(sum(r.finish_reason is not None for r in results)):
                add()
    times = np.array(times)
    return times.mean(), np.median(times), np.percentile(times, 99), tokens / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    print("| scenario | arrays read | mean us/step | p50 | p99 | tokens/step |\n|---|---|---|---|---|---|")
    for name, num_seqs, prompt_len, max_tokens, replace in SCENARIOS:
        for read_arrays in (False, True):
            mean, p50, p99, tps = run(num_seqs, prompt_len, max_tokens, replace, args.steps, read_arrays)
            label = "all" if read_arrays else "input_ids, logits_indices"
            print(f"| {name} | {label} | {mean:.1f} | {p50:.1f} | {p99:.1f} | {tps:.0f} |")


if __name__ == "__main__":
    main()
