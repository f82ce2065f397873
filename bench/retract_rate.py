"""How often a step scheduled ahead decodes a sampled token that changes when the sampler settles it
(the row is then retracted and decoded again a step later), on a real model, by sampling settings
and by the number of first candidates a truncated row samples from.

    python bench/retract_rate.py MODEL [--first-candidates 64 1024] [--device cpu]

Per setting: the rows sampled (retracted rows and their redos included), those whose first
candidates fell short of their kept set, those whose token settling changed, the rows retracted
(a changed token whose sequence had a row in the next step), the steps whose rechecks the engine
waited for before the next step read their tokens (where many change: RESAMPLED_SHARE_LIMIT), and the
tokens generated (the same whatever the candidates: their number never changes a row's result).
"""

from __future__ import annotations

import argparse

import kvserve.sampler as sampler_module
from kvserve import Engine, SamplingParams
from kvserve.model_runner import LaunchedStep
from kvserve.sampler import SamplerOutput

SETTINGS = [(0.7, 0.9), (1.0, 0.9), (1.0, 0.95)]  # (temperature, top_p)
SUBJECTS = ["dragon", "robot", "teacher", "cat", "sailor", "painter", "baker", "pilot"]


class CountingScheduler:
    """The engine's scheduler, counting retract_in_flight calls."""

    def __init__(self, inner):
        self.inner, self.retracts = inner, 0

    def retract_in_flight(self, request_id: str, sample_index: int) -> bool:
        retracted = self.inner.retract_in_flight(request_id, sample_index)
        self.retracts += retracted
        return retracted

    def __getattr__(self, name):
        return getattr(self.inner, name)


def measure(engine: Engine, first_candidates: list[int], max_tokens: int) -> list[dict]:
    """One row per (first candidates, setting): the counts the module docstring lists."""
    scheduler = engine.scheduler = CountingScheduler(engine.scheduler)
    counts = {}
    settle, settle_first, result = SamplerOutput.settle, LaunchedStep.settle, LaunchedStep.result

    def counting_settle_first(step: LaunchedStep) -> None:
        counts["settled_first"] += bool(step.sampled is not None and step.sampled.rechecks)  # a wait
        settle_first(step)

    def counting_settle(output: SamplerOutput) -> list[int]:
        counts["short"] += sum(int((~check.sufficient).sum()) for check in output.rechecks)
        changed = settle(output)
        counts["changed"] += len(changed)
        return changed

    def counting_result(step: LaunchedStep):
        step_result = result(step)
        counts["rows"] += len(step_result.sampled_token_ids)
        return step_result

    prompts = [f"Write a short story about a {subject} who" for subject in SUBJECTS] * 4
    rows = []
    defaults = sampler_module.FIRST_CANDIDATES, sampler_module.FIRST_CANDIDATES_GPU
    SamplerOutput.settle, LaunchedStep.settle, LaunchedStep.result = counting_settle, counting_settle_first, counting_result
    try:
        for first in first_candidates:
            sampler_module.FIRST_CANDIDATES = sampler_module.FIRST_CANDIDATES_GPU = first
            for temperature, top_p in SETTINGS:
                counts.update(rows=0, short=0, changed=0, settled_first=0)
                engine._resampled_share = 0.0  # each setting from a fresh start
                scheduler.retracts = 0
                params = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=1)
                outputs = engine.generate(prompts, params, use_tqdm=False)
                rows.append(dict(first=first, temperature=temperature, top_p=top_p, retracted=scheduler.retracts,
                                 tokens=[output.outputs[0].token_ids for output in outputs], **counts))
    finally:
        SamplerOutput.settle, LaunchedStep.settle, LaunchedStep.result = settle, settle_first, result
        sampler_module.FIRST_CANDIDATES, sampler_module.FIRST_CANDIDATES_GPU = defaults
        engine.scheduler = scheduler.inner
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--first-candidates", type=int, nargs="+", default=[64, 1024])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    engine = Engine(args.model, device=args.device, async_scheduling=True, max_num_seqs=32)
    print(f"{args.model}, {engine.device}, {len(SUBJECTS) * 4} prompts x {args.max_tokens} tokens, seeded\n")
    print("| first candidates | temperature | top_p | rows sampled | candidates short | changed | retracted | "
          "steps settled first | tokens |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in measure(engine, args.first_candidates, args.max_tokens):
        print(f"| {r['first']} | {r['temperature']} | {r['top_p']} | {r['rows']} | {r['short']} | {r['changed']} | "
              f"{r['retracted']} ({r['retracted'] / r['rows']:.1%}) | {r['settled_first']} | "
              f"{sum(map(len, r['tokens']))} |", flush=True)


if __name__ == "__main__":
    main()
