"""Runs that take turns: the bench scripts that compare one batch's speed under variants (a grammar,
a LoRA adapter) time each variant once a round, so that the machine's drift falls on all alike,
and report each variant's best round against a baseline as a markdown table."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable


def turns_parser(description: str, length_flag: str, length: int) -> argparse.ArgumentParser:
    """The flags every such script takes: the model (a preset, or a directory), its dtype, the
    batch (--num-prompts, and `length_flag` of `length` tokens) and the rounds (--repeat)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--model", help="a model directory instead of a preset")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument(length_flag, type=int, default=length)
    parser.add_argument("--repeat", type=int, default=3)
    return parser


def output_rate(generate: Callable[[], list], expected_tokens: int) -> float:
    """Output tokens per second of one generate() call, which must make exactly expected_tokens."""
    start = time.perf_counter()
    outputs = generate()
    elapsed = time.perf_counter() - start
    made = sum(len(o.outputs[0].token_ids) for o in outputs)
    if made != expected_tokens:
        raise RuntimeError(f"expected {expected_tokens} tokens, got {made}")
    return made / elapsed


def taking_turns(runs: dict[str, Callable[[], float]], repeat: int, title: str, against: str,
                 unit: str = "output tok/s") -> list[tuple[str, float, list[float]]]:
    """Each run's rates (in `unit`) over `repeat` rounds, printed as a table (titled `title`, each
    run's best against the best of run `against`); returns (name, best, rounds) per run."""
    rounds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            rounds[name].append(run())
    baseline = max(rounds[against])
    print(f"| {title} | {unit} | vs {against} | rounds |\n|---|---|---|---|")
    results = []
    for name, values in rounds.items():
        best = max(values)
        print(f"| {name} | {best:,.0f} | {best / baseline:.2f}x | {', '.join(f'{v:,.0f}' for v in values)} |")
        results.append((name, best, values))
    return results
