"""Per-step cost of sampling: SamplingMetadata.from_requests + Sampler on random logits.

    python bench/sampler_bench.py [--batch 256] [--vocab 32000] [--repeat 20]
    python bench/sampler_bench.py --device cuda --vocab 128256 --first-candidates 64 1024

Prints a markdown table (milliseconds per step, median of --repeat after a warm-up). "peaked"
logits (randn * 6: the top 64 tokens hold ~98% of the mass, like a trained model's usual step)
keep top-p's kept set within the first candidates; "flat" ones (randn * 0.5, like a random-weights
model) make top-p sort the whole vocabulary.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from kvserve.bench.machine import call_seconds
import kvserve.sampler as sampler_module
from kvserve.sampler import Sampler
from kvserve.sampling_metadata import SamplingMetadata, request_generator
from kvserve.sampling_params import SamplingParams

CASES = [
    ("greedy", dict(temperature=0.0), 6.0),
    ("greedy + penalties", dict(temperature=0.0, repetition_penalty=1.1, frequency_penalty=0.2), 6.0),
    ("greedy + logprobs=5", dict(temperature=0.0, logprobs=5), 6.0),
    ("temperature 0.8", dict(temperature=0.8), 6.0),
    ("temperature 0.8, seeded", dict(temperature=0.8, seed=0), 6.0),
    ("top_k 50", dict(top_k=50), 6.0),
    ("top_p 0.95, peaked", dict(top_p=0.95), 6.0),
    ("top_p 0.95, flat", dict(top_p=0.95), 0.5),
    ("min_p 0.05, peaked", dict(min_p=0.05), 6.0),
    ("half greedy, half top_k 50 + top_p 0.9", None, 6.0),
]


def _params(kw, batch):
    if kw is None:
        return [SamplingParams(temperature=0.0) if i % 2 else SamplingParams(top_k=50, top_p=0.9) for i in range(batch)]
    return [SamplingParams(**kw) for _ in range(batch)]


def _median_ms(fn, repeat, device):
    def call():
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return statistics.median(call_seconds(call, repeat)) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prompt-len", type=int, default=64, help="each row's prompt tokens (penalties read them)")
    parser.add_argument("--output-len", type=int, default=64, help="each row's output tokens so far")
    parser.add_argument("--first-candidates", type=int, nargs="+",
                        help="a table for each number of first candidates of truncated rows (default: the device's)")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    sampler = Sampler()
    outputs = [list(range(i, i + args.output_len)) for i in range(args.batch)]
    # Prompts as the engine passes them (RequestState.prompt_token_array).
    prompts = [np.arange(i, i + args.prompt_len, dtype=np.int64) for i in range(args.batch)]
    default = sampler_module.FIRST_CANDIDATES_GPU if device.type == "cuda" else sampler_module.FIRST_CANDIDATES
    for first in args.first_candidates or [default]:
        # The sampler reads the one its device uses.
        sampler_module.FIRST_CANDIDATES = sampler_module.FIRST_CANDIDATES_GPU = first
        print(f"batch {args.batch}, vocab {args.vocab}, {device}, {first} first candidates, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads\n")
        print("| case | metadata ms | sampler ms | total ms |")
        print("|---|---|---|---|")
        for name, kw, scale in CASES:
            params = _params(kw, args.batch)
            generators = [request_generator(p, device=device) for p in params]
            logits = torch.randn(args.batch, args.vocab, device=device) * scale

            def build():
                return SamplingMetadata.from_requests(
                    params, outputs, prompts, generators, vocab_size=args.vocab, eos_token_ids=[0], device=device
                )

            metadata = build()
            build_ms = _median_ms(build, args.repeat, device)
            sample_ms = _median_ms(lambda: sampler(logits.clone(), metadata), args.repeat, device)
            clone_ms = _median_ms(logits.clone, args.repeat, device)
            sample_ms -= clone_ms
            print(f"| {name} | {build_ms:.3f} | {sample_ms:.2f} | {build_ms + sample_ms:.2f} |")
        print()


if __name__ == "__main__":
    main()
