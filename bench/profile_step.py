#!/usr/bin/env python
"""Where an engine step's time goes: runs an offline case under py-spy and splits the samples of the
timed steps into the engine's parts, in ms per step and %.

    pip install py-spy
    python bench/profile_step.py --preset tiny --case offline-256-64-64 --out profile-tiny
    python bench/profile_step.py --preset small --case offline-64-128-128 --skip-tokenizer-init --out ...

The case runs twice, in a fresh process each time: once as it is, for the step times, and once
under py-spy (`--native`), for where they go. Each run loads the model, warms up with one request
(as `kvserve bench throughput` does), adds every request, then steps the engine itself, timing
each step, through `prefill_step` (some request still waits for its first token: the step holds
prompt tokens) or `decode_step`, so that py-spy's stacks say which kind of step they sampled.
py-spy samples the main thread, which runs every step from start to end (torch's and the kernels'
worker threads join it), so a part's share of a kind's samples times that kind's step time in the
unprofiled run is the part's time. py-spy stops the process for each sample (with --native at 200
Hz the run takes about 3× as long), which can shift the shares too, most of all the time spent in
OpenMP's fork/join and barriers; the header gives both wall times.

Writes <out>/profile.txt (py-spy's raw stacks, for a flame graph: flamegraph.pl or speedscope),
<out>/timeline.json, <out>/timeline-profiled.json and <out>/breakdown.md.
"""

from __future__ import annotations

import argparse
import json
import linecache
import re
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import kvserve

# (part, how a stack frame is recognized), tried from the innermost frame outwards: the first
# frame that matches names the part. Frames are py-spy's "function (path:line)" or native symbols;
# marks are regular expressions searched in a frame. The kernels of kvserve/ops.py are told apart by
# their function's name. OUTER_PARTS win wherever they stand in the stack (the LM head's product runs
# through the same linear() as the projections).
OUTER_PARTS = (
    ("GEMM: lm_head (logits)", (r"(^|\.)compute_logits \(",)),
)
PARTS = (
    ("attention kernels (rotary + cache write, paged_attention)",
     (r"^(rotary_and_cache|reshape_and_cache|paged_attention|copy_blocks) \(.*kvserve/ops\.py",)),
    # linear_rotary_and_cache (CUDA only): the qkv projection with the rotary and the cache write fused in;
    # dequantize_weight: an fp8 weight widened for a product of many rows.
    ("GEMM: projections (qkv, o, gate_up, down)", (r"kvserve/models/layers/linear\.py",
                                                  r"^(linear(_rotary_and_cache)?|dequantize_weight) \(.*kvserve/ops\.py")),
    ("RMSNorm (+ residual add)", (r"kvserve/models/layers/rms_norm\.py", r"^(fused_add_)?rms_norm \(.*kvserve/ops\.py")),
    ("rotary embedding", (r"kvserve/models/layers/rotary_embedding\.py", r"^rotary_embedding \(.*kvserve/ops\.py")),
    ("SiLU and mul", (r"kvserve/models/layers/activation\.py", r"^silu_and_mul \(.*kvserve/ops\.py")),
    ("embedding lookup", (r"kvserve/models/layers/embedding\.py",)),
    ("model: other (views, buffers, module calls)", (r"kvserve/models/",)),
    ("sampler", (r"kvserve/sampler\.py", r"^argmax \(.*kvserve/ops\.py")),
    ("SamplingMetadata building", (r"kvserve/sampling_metadata\.py",)),
    ("model runner: other (arrays to tensors, row gather)", (r"kvserve/model_runner\.py",)),
    ("output processing + detokenization", (r"kvserve/output_processor\.py", r"kvserve/detokenizer\.py",
                                            r"kvserve/text_stream\.py", r"kvserve/request_state\.py",
                                            r"kvserve/outputs\.py")),
    ("engine step: other Python", (r"kvserve/engine\.py",)),
)
SCHEDULER = "scheduler (C++: schedule, update_from_output)"
GC = "Python garbage collection"
OTHER = "other"
PHASES = ("prefill", "decode")
ROUND_SEED = 1000


def prefill_step(engine) -> None:
    engine.step()


def decode_step(engine) -> None:
    engine.step()


def run_case(args: argparse.Namespace) -> None:
    """The profiled process: one offline case, stepped and timed here."""
    from kvserve import Engine
    from kvserve.bench.checkpoint import ensure_model
    from kvserve.bench.datasets import offline_prompts, warmup_prompt
    from kvserve.bench.engine_setup import fixed_length
    from kvserve.bench.presets import parse_case

    case = parse_case(args.case)
    engine = Engine(str(ensure_model(args.preset)), dtype=args.dtype, max_num_seqs=case.num_prompts,
                    skip_tokenizer_init=args.skip_tokenizer_init)
    params = fixed_length(case.output_len)
    vocab_size = engine.model_config.vocab_size
    engine.generate([{"prompt_token_ids": warmup_prompt(case.input_len, vocab_size)[0].tolist()}], params,
                    use_tqdm=False)
    steps, wall = [], 0.0
    for round_index in range(args.rounds):
        # Round 0 is WORKLOAD.md's draw; later rounds draw other prompts, which the prefix cache lacks.
        prompts = offline_prompts(case.num_prompts, case.input_len, vocab_size, seed=ROUND_SEED * round_index)
        for i, prompt in enumerate(prompts):
            engine.add_request(f"profile-{round_index}-{i}", {"prompt_token_ids": prompt.tolist()}, params)
        start = time.perf_counter()
        while engine.has_unfinished_requests():
            waiting = any(state.metrics.first_token_time is None for state in engine.requests.values())
            step_start = time.perf_counter()
            (prefill_step if waiting else decode_step)(engine)
            steps.append(("prefill" if waiting else "decode", time.perf_counter() - step_start))
        wall += time.perf_counter() - start
    num_output = args.rounds * case.num_prompts * case.output_len
    timeline = {"case": args.case, "preset": args.preset, "dtype": str(engine.dtype).removeprefix("torch."),
                "rounds": args.rounds, "wall_s": wall, "output_tok_s": num_output / wall, "steps": steps}
    args.timeline.write_text(json.dumps(timeline) + "\n")


def _source_line(frame: str) -> str:
    """The source text of a kvserve frame "function (kvserve/x.py:123)"."""
    location = frame[frame.rfind("(") + 1:-1]
    path, _, line = location.rpartition(":")
    if not path.startswith("kvserve/") or not line.isdigit():
        return ""
    return linecache.getline(str(Path(kvserve.__file__).parent.parent / path), int(line))


def part_of(frames: list[str]) -> str:
    if any(frame.startswith("gc_collect") for frame in frames):
        return GC
    for part, marks in OUTER_PARTS:
        if any(re.search(mark, frame) for frame in frames for mark in marks):
            return part
    for frame in reversed(frames):
        if frame.startswith("Engine.") and "self.scheduler." in _source_line(frame):
            return SCHEDULER
        for part, marks in PARTS:
            if any(re.search(mark, frame) for mark in marks):
                return part
    return OTHER


@dataclass
class Samples:
    parts: dict[str, Counter]  # phase -> part -> samples
    openmp: dict[str, Counter]  # phase -> part -> of those, samples inside libgomp (fork/join, barriers)
    leaves: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # part -> innermost frame

    def share(self, phase: str, part: str, counts: dict[str, Counter] | None = None) -> float:
        total = sum(self.parts[phase].values())
        return (counts or self.parts)[phase][part] / total if total else 0.0


def _leaf_name(frame: str) -> str:
    """A readable name for an innermost frame: a Python function, a C++ function without its
    template arguments, or the library of an address py-spy found no symbol for."""
    name, _, where = frame.partition(" (")
    where = where.removesuffix(")")
    if name.startswith("0x"):
        return "no symbol (oneDNN's JIT kernels, or a stripped library)" if where == "?" else f"{where}, no symbol"
    if ".py:" in where:
        return f"{name} ({where.rpartition(':')[0]})"
    return name.split("<")[0]


def read_samples(profile: Path) -> Samples:
    samples = Samples({p: Counter() for p in PHASES}, {p: Counter() for p in PHASES})
    for line in profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        phase = next((p for p in PHASES if any(f.startswith(f"{p}_step (") for f in frames)), None)
        if phase is None:
            continue  # loading, warm-up, setup: not a timed step
        part = part_of(frames)
        samples.parts[phase][part] += int(count)
        samples.leaves[part][_leaf_name(frames[-1])] += int(count)
        if "libgomp" in frames[-1]:
            samples.openmp[phase][part] += int(count)
    return samples


def breakdown(samples: Samples, timeline: dict, profiled: dict) -> str:
    steps = {p: [s for kind, s in timeline["steps"] if kind == p] for p in PHASES}
    step_s = {p: sum(steps[p]) for p in PHASES}
    per_step_ms = {p: 1e3 * step_s[p] / len(steps[p]) if steps[p] else 0.0 for p in PHASES}
    lines = [
        f"{timeline['case']} on {timeline['preset']} ({timeline['dtype']}), {timeline['rounds']} rounds: "
        f"{len(timeline['steps'])} steps in {timeline['wall_s']:.2f} s ({timeline['output_tok_s']:.0f} output "
        f"tok/s; {profiled['wall_s']:.2f} s under py-spy); "
        + "; ".join(f"{len(steps[p])} {p} steps of {per_step_ms[p]:.1f} ms ({sum(samples.parts[p].values())} "
                    "samples)" for p in PHASES) + ".",
        "",
        "| part | prefill ms/step | prefill % | decode ms/step | decode % | share of all step time | "
        "of it in OpenMP (libgomp) |",
        "|---|---|---|---|---|---|---|",
    ]
    parts = [part for part, _ in OUTER_PARTS + PARTS] + [SCHEDULER, GC, OTHER]
    for part in parts:
        seconds = sum(samples.share(p, part) * step_s[p] for p in PHASES)
        if not seconds:
            continue
        in_openmp = sum(samples.share(p, part, samples.openmp) * step_s[p] for p in PHASES)
        cells = " | ".join(f"{samples.share(p, part) * per_step_ms[p]:.2f} | {100 * samples.share(p, part):.1f}%"
                           for p in PHASES)
        lines.append(f"| {part} | {cells} | {100 * seconds / sum(step_s.values()):.1f}% "
                     f"| {100 * in_openmp / seconds:.0f}% |")
    lines += ["", "Innermost frames of each part (share of the part's samples, all steps):", ""]
    for part in parts:
        leaves = samples.leaves.get(part)
        if leaves:
            total = sum(leaves.values())
            top = ", ".join(f"{name} {100 * n / total:.0f}%" for name, n in leaves.most_common(3))
            lines.append(f"- {part}: {top}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--preset", required=True, help="a WORKLOAD.md model preset")
    parser.add_argument("--case", required=True, help="offline-N-IN-OUT")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--skip-tokenizer-init", action="store_true", help="no detokenization (as compare.py runs)")
    parser.add_argument("--rounds", type=int, default=1, help="run the case this many times, for more samples")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, default=Path("profile"), help="directory for the results")
    parser.add_argument("--run", action="store_true", help=argparse.SUPPRESS)  # the profiled child
    parser.add_argument("--timeline", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run_case(args)
        return
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        parser.error("py-spy is not installed: pip install py-spy")
    args.out.mkdir(parents=True, exist_ok=True)
    profile, timeline, profiled = (args.out / name for name in ("profile.txt", "timeline.json",
                                                                "timeline-profiled.json"))
    child = [sys.executable, __file__, "--run", "--preset", args.preset, "--case", args.case, "--dtype", args.dtype,
             "--rounds", str(args.rounds), *(["--skip-tokenizer-init"] if args.skip_tokenizer_init else [])]
    subprocess.run([*child, "--timeline", str(timeline)], check=True)
    subprocess.run([py_spy, "record", "--native", "-r", str(args.rate), "--format", "raw", "-o", str(profile),
                    "--", *child, "--timeline", str(profiled)], check=True)
    table = breakdown(read_samples(profile), json.loads(timeline.read_text()), json.loads(profiled.read_text()))
    (args.out / "breakdown.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
