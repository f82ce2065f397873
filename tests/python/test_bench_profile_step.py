"""bench/profile_step.py's accounting: which part a py-spy stack belongs to, and ms per step from
sample shares and the unprofiled step times (py-spy itself is not run here)."""

import inspect
import re
from pathlib import Path

import pytest

import kvserve
from kvserve import ops
from bench_script import load_bench_script

profile_step = load_bench_script("profile_step")

STEP = ["<module> (kvserve/cli.py:1)", "run_case (profile_step.py:90)", "decode_step (profile_step.py:67)",
        "Engine.step (kvserve/engine.py:{step})", "Engine._launch (kvserve/engine.py:{line})"]


def engine_line(text: str) -> int:
    source = (Path(kvserve.__file__).parent / "engine.py").read_text().splitlines()
    return next(i for i, line in enumerate(source, 1) if text in line)


def stack(*inner: str, launch_line: int | None = None) -> list[str]:
    """A decode step's frames down to Engine._launch at `launch_line` (default: the model runner's
    call), then `inner`."""
    lines = {"step": engine_line("launched = self._launch("),
             "line": launch_line or engine_line("self.runner.launch(")}
    return [f.format(**lines) for f in STEP] + list(inner)


def test_every_part_names_files_and_functions_that_exist():
    package_root = Path(kvserve.__file__).parent.parent
    for part, marks in profile_step.OUTER_PARTS + profile_step.PARTS:
        for mark in marks:
            for path in re.findall(r"kvserve/[a-z_/]*(?:\\\.py|/)", mark):
                path = path.replace("\\.", ".")
                assert (package_root / path).exists(), f"{part}: {path} is gone; the profile would call it 'other'"


def test_every_kernel_of_kvserve_ops_lands_in_a_named_part():
    kernels = [name for name, value in vars(ops).items()
               if inspect.isfunction(value) and value.__module__ == ops.__name__ and not name.startswith("_")]
    assert "paged_attention" in kernels and "fused_add_rms_norm" in kernels
    for name in kernels:
        part = profile_step.part_of(stack(f"{name} (kvserve/ops.py:1)"))
        assert part not in ("engine step: other Python", "other"), f"kvserve.ops.{name} would count as {part!r}"


@pytest.mark.parametrize("inner, part", [
    (["Linear.forward (kvserve/models/layers/linear.py:25)", "0x7f00 (?)"],
     "GEMM: projections (qkv, o, gate_up, down)"),
    (["LlamaForCausalLM.compute_logits (kvserve/models/llama.py:132)", "at::internal::invoke_parallel<x> (libtorch)"],
     "GEMM: lm_head (logits)"),
    (["RMSNorm.forward (kvserve/models/layers/rms_norm.py:20)", "rms_norm (torch/nn/functional.py:3006)",
      "0x7f01 (libgomp.so.1.0.0)"], "RMSNorm (+ residual add)"),
    (["Attention.__call__ (kvserve/models/layers/attention.py:44)", "paged_attention (kvserve/ops.py:66)",
      "0x7f02 (_C.cpython-311-x86_64-linux-gnu.so)"], "attention kernels (rotary + cache write, paged_attention)"),
    (["Sampler.__call__ (kvserve/sampler.py:156)"], "sampler"),
    (["Sampler.__call__ (kvserve/sampler.py:156)", "argmax (kvserve/ops.py:116)"], "sampler"),
    (["RMSNorm.add_and_norm (kvserve/models/layers/rms_norm.py:31)", "fused_add_rms_norm (kvserve/ops.py:96)",
      "0x7f04 (_C.cpython-311-x86_64-linux-gnu.so)"], "RMSNorm (+ residual add)"),
    (["LlamaMLP.forward (kvserve/models/llama.py:68)", "silu_and_mul (kvserve/models/layers/activation.py:13)",
      "silu_and_mul (kvserve/ops.py:110)"], "SiLU and mul"),
    (["LlamaForCausalLM.compute_logits (kvserve/models/llama.py:132)", "linear (kvserve/models/layers/linear.py:50)",
      "linear (kvserve/ops.py:124)"], "GEMM: lm_head (logits)"),
    (["Attention.__call__ (kvserve/models/layers/attention.py:44)", "rotary_and_cache (kvserve/ops.py:110)"],
     "attention kernels (rotary + cache write, paged_attention)"),
    (["process_step (kvserve/output_processor.py:49)", "TextStream.push (kvserve/text_stream.py:126)"],
     "output processing + detokenization"),
    (["LlamaModel.forward (kvserve/models/llama.py:80)", "gc_collect_main (libpython3.11.so.1.0)"],
     "Python garbage collection"),
])
def test_a_stack_goes_to_its_innermost_known_part(inner, part):
    assert profile_step.part_of(stack(*inner)) == part


def test_scheduler_calls_are_told_apart_by_the_source_line():
    schedule = stack("0x7f03 (_C.cpython-311-x86_64-linux-gnu.so)", launch_line=engine_line("self.scheduler.schedule()"))
    assert profile_step.part_of(schedule) == "scheduler (C++: schedule, update_from_output)"
    other = stack("0x7f03 (libc.so.6)", launch_line=engine_line("now = time.time()"))
    assert profile_step.part_of(other) == "engine step: other Python"


def test_breakdown_turns_sample_shares_into_ms_per_step(tmp_path):
    linear = ";".join(stack("Linear.forward (kvserve/models/layers/linear.py:25)", "0x7f00 (libgomp.so.1.0.0)"))
    sampler = ";".join(stack("Sampler.__call__ (kvserve/sampler.py:156)"))
    prefill = linear.replace("decode_step (", "prefill_step (")
    warmup = "<module> (kvserve/cli.py:1);run_case (profile_step.py:80);Engine.step (kvserve/engine.py:125)"
    profile = tmp_path / "profile.txt"
    profile.write_text(f"{linear} 30\n{sampler} 10\n{prefill} 7\n{warmup} 50\n")
    samples = profile_step.read_samples(profile)
    assert samples.parts["decode"] == {"GEMM: projections (qkv, o, gate_up, down)": 30, "sampler": 10}
    assert samples.openmp["decode"] == {"GEMM: projections (qkv, o, gate_up, down)": 30}
    timeline = {"case": "offline-2-4-3", "preset": "tiny", "dtype": "bfloat16", "rounds": 1, "wall_s": 0.05,
                "output_tok_s": 120.0, "steps": [["prefill", 0.010], ["decode", 0.016], ["decode", 0.024]]}
    table = profile_step.breakdown(samples, timeline, dict(timeline, wall_s=0.15))
    # decode: 20 ms per step, 3/4 of it in the projections; prefill: 10 ms, all projections.
    # All steps: (10 + 30) of 50 ms in projections, all of it inside libgomp.
    assert "| GEMM: projections (qkv, o, gate_up, down) | 10.00 | 100.0% | 15.00 | 75.0% | 80.0% | 100% |" in table
    assert "| sampler | 0.00 | 0.0% | 5.00 | 25.0% | 20.0% | 0% |" in table
    assert "1 prefill steps of 10.0 ms (7 samples); 2 decode steps of 20.0 ms (40 samples)" in table
