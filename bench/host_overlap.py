"""The engine's host work per decode step, and how much of it the overlapped steps (those a GPU
runs) take off the step, measured without a GPU.

The model runner is replaced by a stand-in device: a launched step finishes `--device-ms` after it
starts, and a step starts when the one before it has finished (in order, like a CUDA stream); its
tokens are random. Everything else is the engine's own code: the scheduler, the tokens' application,
the detokenizer and the outputs (the tiny preset's tokenizer, DELTA outputs as the server asks).

    python bench/host_overlap.py [--batches 1 64] [--device-ms 6.6 9.4] [--steps 200]

Per batch: the median ms a step with each way the engine steps: "plain" (the host's work all
between two device steps), "overlapped" (a step launched once the tokens of the one before are
applied: the scheduler and the launch between two device steps) and "ahead" (async scheduling, the
GPU default: the next step launched before the last one's tokens are known). What a step takes
beyond the device's time is the host's work left on the device's path.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import numpy as np

from kvserve import Engine, RequestOutputKind, SamplingParams
from kvserve.bench.checkpoint import ensure_model
from kvserve.model_runner import StepResult


@dataclass
class StandInStep:
    ready_at: float  # time.perf_counter() when the device has the step's tokens
    tokens: np.ndarray

    def sample(self, void=()) -> None:
        pass

    def result(self) -> StepResult:
        left = self.ready_at - time.perf_counter()
        if left > 1e-3:
            time.sleep(left - 1e-3)
        while time.perf_counter() < self.ready_at:  # the last millisecond spun, as a CUDA sync spins
            pass
        return StepResult(self.tokens, None, {}, [], 0)


class StandInDevice:
    def __init__(self, device_ms: float, vocab_size: int):
        self.step_s = device_ms / 1e3
        self.free_at = 0.0
        self.rng = np.random.default_rng(0)
        self.vocab_size = vocab_size

    def launch(self, out, requests, previous=None) -> StandInStep:
        start = max(time.perf_counter(), self.free_at)
        self.free_at = start + self.step_s
        return StandInStep(self.free_at, self.rng.integers(10, self.vocab_size, out.num_sampled, dtype=np.int32))


MODES = ("plain", "overlapped", "ahead")


def ms_per_step(engine: Engine, batch: int, steps: int, device_ms: float, mode: str) -> float:
    engine.runner.launch = StandInDevice(device_ms, engine.model_config.vocab_size).launch
    engine.runner.asynchronous = mode != "plain"  # the stand-in device, as a GPU, runs steps asynchronously
    engine.async_scheduling = mode == "ahead"
    params = SamplingParams(temperature=0, max_tokens=steps + 8, ignore_eos=True, output_kind=RequestOutputKind.DELTA)
    prompts = np.random.default_rng(batch).integers(10, engine.model_config.vocab_size, (batch, 128))
    for i, prompt in enumerate(prompts):
        engine.add_request(f"{mode}-{i}", {"prompt_token_ids": prompt.tolist()}, params)
    for _ in range(4):  # prefill, then into the steady state
        engine.step()
    times, start = [], time.perf_counter()
    for _ in range(steps):
        engine.step()
        end = time.perf_counter()
        times.append(end - start)
        start = end
    engine.abort(list(engine.requests))
    while engine.has_unfinished_requests():
        engine.step()
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--device-ms", type=float, nargs="+", default=[6.6, 9.4],
                        help="the stand-in device's step, one per batch (default: the H100's graphed 8b steps)")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    if len(args.device_ms) != len(args.batches):
        parser.error("--device-ms: one per batch")
    engine = Engine(str(ensure_model("tiny")), dtype="bfloat16", device="cpu", max_num_seqs=max(args.batches))
    print("| batch | device ms | plain step ms | overlapped step ms | ahead step ms | host ms left on the path, ahead |")
    print("|---|---|---|---|---|---|")
    for batch, device_ms in zip(args.batches, args.device_ms):
        ms = {mode: ms_per_step(engine, batch, args.steps, device_ms, mode) for mode in MODES}
        print(f"| {batch} | {device_ms:.2f} | {ms['plain']:.3f} | {ms['overlapped']:.3f} | {ms['ahead']:.3f} | "
              f"{ms['ahead'] - device_ms:.3f} |", flush=True)


if __name__ == "__main__":
    main()
