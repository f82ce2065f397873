#!/usr/bin/env python
"""What narrower numbers cost a real model's predictions: kvserve's default model (SmolLM2-135M-
Instruct, real weights) in float32 with kv_cache_dtype auto, fp8 (e4m3), fp8_e5m2 and bfloat16, with
quantization="fp8" (its decoder weights as e4m3 codes, a scale a row), and for a yardstick the same
model in bfloat16 (its cache too), the rounding users already accept, and bfloat16 with fp8 weights.
Random-weight models cannot say this; the tests pin the arithmetic, this measures the effect.

  perplexity   of a text (this repository's README, in windows of --window tokens) from each
               position's prompt logprob: the model reads the text with its keys and values rounded
  top-1        the share of positions whose most likely next token is float32's with its own cache
  greedy       per prompt, the tokens a greedy continuation keeps equal to float32's before the
               first difference (of --max-tokens)

    python bench/accuracy.py [--window 1024] [--windows 4] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from kvserve import Engine, SamplingParams
from kvserve.loader.default_model import default_model_path

# (name, model dtype, kv_cache_dtype, quantization); the first is the reference.
SETTINGS = [("float32", "float32", "auto", None), ("float32, fp8 cache", "float32", "fp8", None),
            ("float32, fp8_e5m2 cache", "float32", "fp8_e5m2", None),
            ("float32, bfloat16 cache", "float32", "bfloat16", None),
            ("float32, fp8 weights", "float32", "auto", "fp8"), ("bfloat16", "bfloat16", "auto", None),
            ("bfloat16, fp8 weights", "bfloat16", "auto", "fp8")]
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Write a short poem about the sea.",
           "Explain how a hash table works.", "List three uses of a KV cache in language model serving:",
           "Once upon a time, in a small village,", "The main difference between TCP and UDP is",
           "To make bread you need"]


def prompt_logprobs(engine: Engine, windows: list[list[int]]) -> list[tuple[list[float], list[int]]]:
    """Per window, each position's logprob of the text's token and the model's most likely token."""
    params = SamplingParams(max_tokens=1, prompt_logprobs=1, temperature=0)
    outputs = engine.generate([{"prompt_token_ids": w} for w in windows], params, use_tqdm=False)
    result = []
    for window, output in zip(windows, outputs):
        positions = output.prompt_logprobs[1:]
        actual = [entry[token].logprob for entry, token in zip(positions, window[1:])]
        top = [max(entry.items(), key=lambda kv: kv[1].logprob)[0] for entry in positions]
        result.append((actual, top))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    model = str(default_model_path())
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    results = {}
    for name, dtype, kv_cache_dtype, quantization in SETTINGS:
        engine = Engine(model, dtype=dtype, kv_cache_dtype=kv_cache_dtype, quantization=quantization, device="cpu",
                        enable_prefix_caching=False)
        ids = engine.tokenizer.encode(text)
        windows = [ids[i:i + args.window] for i in range(0, args.windows * args.window, args.window)]
        greedy = engine.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True),
                                 use_tqdm=False)
        results[name] = (prompt_logprobs(engine, windows), [g.outputs[0].token_ids for g in greedy])
        del engine

    (base_windows, base_greedy) = results[SETTINGS[0][0]]
    positions = sum(len(actual) for actual, _ in base_windows)
    print(f"\nSmolLM2-135M-Instruct; {len(base_windows)} windows of {args.window} tokens of README.md "
          f"({positions} positions); {len(PROMPTS)} greedy continuations of {args.max_tokens} tokens\n")
    print("| model, KV cache, weights | perplexity | vs float32 | top-1 as float32's | mean abs Δ logprob "
          "| greedy tokens equal to float32's before the first difference |")
    print("|---|---|---|---|---|---|")
    base_ppl = None
    for name, (windows, greedy) in results.items():
        actual = [lp for a, _ in windows for lp in a]
        ppl = math.exp(-sum(actual) / len(actual))
        base_ppl = base_ppl or ppl
        same_top = sum(t == b for (_, tops), (_, base_tops) in zip(windows, base_windows)
                       for t, b in zip(tops, base_tops))
        delta = sum(abs(x - y) for (a, _), (b, _) in zip(windows, base_windows) for x, y in zip(a, b)) / len(actual)
        kept = [next((i for i, (x, y) in enumerate(zip(g, b)) if x != y), len(g)) for g, b in zip(greedy, base_greedy)]
        print(f"| {name} | {ppl:.3f} | {ppl / base_ppl:.4f}x | {100 * same_top / positions:.2f}% | {delta:.4f} | "
              f"{', '.join(map(str, kept))} |")


if __name__ == "__main__":
    main()
