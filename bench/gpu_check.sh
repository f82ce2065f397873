#!/usr/bin/env bash
# Everything issue 8 asks of a lent GPU, in one device call of at most ~10 minutes: build kvserve
# there, look at the kernels' machine code, run the GPU tests, then the benchmarks. Run from the
# repository root with OUT set to an empty directory; it writes at most 8 files there (all that a
# lent machine's call brings back) and ends with a short table on stdout:
#
#   OUT=/some/dir bench/gpu_check.sh
#   OUT=/some/dir BASELINE=.baseline bench/gpu_check.sh   # and another source tree, side by side
#
#   env.txt      the GPU, driver, nvcc, torch          build.log   pip's build, with ptxas' resource use
#   kernels.txt  registers/spills, SASS counts and     tests.log   pytest over the GPU tests
#                ncu's view of one decode attention    bench.log   the benchmarks' output
#   bench.jsonl  one JSON line per measurement         profile.txt where a decode step's GPU time goes
#   summary.md   the table printed last                            (then batch 1's with KVSERVE_PDL=0)
#
# Each stage has its own time limit, cut to what is left of GPU_CHECK_SECONDS (default 560), and a
# failing stage does not stop the ones after it. GPU_CHECK_STAGES="build tests decode ..." runs only
# the stages named (a short call that checks one change), GPU_CHECK_TESTS="FILE ..." only those
# test files. Needs nvcc, cmake, ninja, nanobind, scikit-build-core,
# torch, transformers, safetensors, tokenizers, numpy and pytest; no network.
set -u
: "${OUT:?set OUT to the directory for the results}"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_SECONDS:-560}
export OUT PY PYTHONUNBUFFERED=1
START=$(date +%s)
STAGES=()

# run NAME LIMIT LOG COMMAND...: runs COMMAND with at most LIMIT seconds (less if the budget is short),
# its output appended to LOG; records "NAME rc seconds".
run() {
  local name=$1 limit=$2 log=$3
  shift 3
  [ -n "${GPU_CHECK_STAGES:-}" ] && [[ " $GPU_CHECK_STAGES " != *" $name "* ]] && return
  local left=$((BUDGET - ($(date +%s) - START)))
  if [ "$left" -lt 20 ]; then
    STAGES+=("$name skipped 0")
    echo "== $name: skipped, no time left" >>"$log"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0=$(date +%s)
  echo "== $name (limit ${limit}s): $*" >>"$log"
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  STAGES+=("$name $rc $(($(date +%s) - t0))")
  echo "== $name: exit $rc" >>"$log"
}

{
  nvidia-smi
  nvcc --version
  "$PY" -c "import torch; print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
  uname -a
} >"$OUT/env.txt" 2>&1

# Wheels carried in .wheels/ (the machine has no network): llguidance, for the structured-output tests;
# peft and accelerate, for the LoRA test.
if compgen -G ".wheels/*.whl" >/dev/null; then
  "$PY" -m pip install --no-deps --no-index .wheels/*.whl >"$OUT/wheels.log" 2>&1 || true
fi

# Build for this GPU only (sm_90a on an H100), with ptxas' per-kernel resource report in the log.
run build 300 "$OUT/build.log" "$PY" -m pip install --no-build-isolation --no-deps -v . \
  -Cbuild-dir=/tmp/kvserve-build -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=90a-real \
  "-Ccmake.define.CMAKE_CUDA_FLAGS=--resource-usage"

# Registers, stack and spills per kernel from ptxas, then the tensor-core kernels' loops (attention's
# per-stage loop, the few-rows linear's) from their SASS (bench/sass_loops.py: instructions by kind; LDL/STL must be 0).
kernel_report() {
  grep -E "Function properties|bytes stack frame|Used [0-9]+ registers" "$OUT/build.log" | sed 's/^ *//'
  "$PY" bench/sass_loops.py --kernel attention_mma
  "$PY" bench/sass_loops.py --kernel linear_kernel
}
export -f kernel_report
run kernels 30 "$OUT/kernels.txt" bash -c kernel_report
# Nsight Compute on one decode attention call at batch 1 (a decode graph's table) and one at batch 64
# (throughput against the memory ceiling, occupancy, warp stalls); the clocks are left alone. Twice:
# with the caches flushed before the call (ncu's default), as the engine's calls find them after a
# layer's weights streamed through the L2, and without, as back-to-back calls find them.
for cache in all none; do
  run "ncu-cache-$cache" 60 "$OUT/kernels.txt" ncu --clock-control none --cache-control "$cache" \
    -k regex:attention_mma_kernel --launch-skip 5 --launch-count 1 --filter-mode per-launch-config \
    --section SpeedOfLight --section Occupancy --section MemoryWorkloadAnalysis --section WarpStateStats \
    "$PY" bench/gpu_bench.py attention --cases 1x512/8192 64x512 --no-prefill --out /tmp/ncu-bench.jsonl
done
# The shared memory each kernel of a graphed batch-1 decode step asks for and the L1/shared split
# (carveout) it ran with: an SM runs blocks of two kernels at once only under one split, so a
# product launched programmatically after attention (228 KB of shared memory against the
# products' 32) waits for it to drain. (One split for all, attention's, made the products 1.4-1.8x
# slower on an H200: they read their input rows through L1. bench/README.md.)
run ncu-smem 60 "$OUT/kernels.txt" ncu --clock-control none --kernel-name-base function --launch-skip 3000 \
  --launch-count 200 --section LaunchStats \
  "$PY" bench/gpu_bench.py decode --batches 1 --steps 16 --out /tmp/ncu-decode.jsonl
# The same for a decode-tile attention call inside the engine's batch-1 decode graph, past the
# capture's and the prefill's calls (its time was 2.2x the benchmark's call: bench/README.md).
run ncu-engine 90 "$OUT/kernels.txt" ncu --clock-control none --kernel-name-base demangled \
  -k "regex:MmaTile<.*128, \(int\)16, [^,]*BFloat16, \(int\)4>" --launch-skip 160 --launch-count 1 \
  --section SpeedOfLight --section Occupancy --section MemoryWorkloadAnalysis --section WarpStateStats \
  "$PY" bench/gpu_bench.py decode --batches 1 --steps 16 --out /tmp/ncu-decode.jsonl

GPU_TESTS=(tests/python/test_cuda_paged_attention.py tests/python/test_layer_ops.py tests/python/test_linear_ops.py
           tests/python/test_cuda_engine.py tests/python/test_paged_attention.py tests/python/test_device.py
           tests/python/test_extension.py tests/python/test_decode_graphs.py tests/python/test_sampler.py
           tests/python/test_bench_sass_loops.py tests/python/test_cuda_codes.py
           tests/python/test_structured_outputs.py::test_on_a_gpu_every_output_matches
           tests/python/test_lora.py::test_on_a_gpu_adapters_match_peft
           tests/python/test_speculative.py::test_on_the_gpu_outputs_equal_the_engines_without_drafts)
[ -n "${GPU_CHECK_TESTS:-}" ] && read -r -a GPU_TESTS <<<"$GPU_CHECK_TESTS"
# Not the CPU kernels' runs under lesser ISAs (test_every_isa_path): CPU work, which CI does.
run tests 200 "$OUT/tests.log" "$PY" -m pytest -q -rs -p no:cacheprovider -k "not every_isa_path" "${GPU_TESTS[@]}"
# A failure there, run again with the kernels launched the plain way: whether programmatic dependent
# launch and the work before the wait are what broke.
if printf '%s\n' "${STAGES[@]}" | grep -qE '^tests [1-9]'; then
  run tests-no-pdl 200 "$OUT/tests.log" env KVSERVE_PDL=0 \
    "$PY" -m pytest -q -rs -p no:cacheprovider -k "not every_isa_path" "${GPU_TESTS[@]}"
fi

run attention 60 "$OUT/bench.log" "$PY" bench/gpu_bench.py attention --out "$OUT/bench.jsonl"
# The engine's decode attention took 2.2x the benchmark's time at batch 1 and 1.3x at batch 64 (H100,
# bench/README.md), with the same block-table width: the same calls again with an engine-sized
# cache (its blocks scattered over 60 GiB) and a context that ends inside a stage.
run attention-engine 40 "$OUT/bench.log" "$PY" bench/gpu_bench.py attention --no-prefill --cache-gib 60 \
  --cases 1x512/8192 1x520/8192 64x512/8192 64x520/8192 --out "$OUT/bench.jsonl"
# The same calls with the keys split 1 to 64 ways (ops.paged_attention's num_splits), timed in a
# graph and after the L2 is overwritten: which count the launch should choose for the engine.
run attention-splits 60 "$OUT/bench.log" "$PY" bench/gpu_bench.py attention --no-prefill \
  --cases 1x512/8192 8x512/8192 64x512/8192 64x2048/8192 --splits 1 2 4 8 16 33 64 --out "$OUT/bench.jsonl"
run linear 40 "$OUT/bench.log" "$PY" bench/gpu_bench.py linear --batches 1 8 64 --out "$OUT/bench.jsonl"
# The products over quantized codes (uint4: GPTQ, AWQ, GGUF Q4; int8; fp8), each batch both ways:
# kvserve's kernels (few rows up to 32, tiled past them) and the weight widened for cuBLAS
# (linear.py's CUDA_CODES_MAX_ROWS chooses between them from a model of the rates: these rows say
# where it should), then graphed decode steps on uint4 and fp8 codes beside the bfloat16 rows.
for codes in uint4 int8 fp8; do
  run "linear-$codes-weights" 90 "$OUT/bench.log" "$PY" bench/gpu_bench.py linear --weights "$codes" \
    --batches 1 8 16 32 64 128 256 512 1024 --out "$OUT/bench.jsonl"
done
for codes in uint4 fp8; do
  run "decode-$codes-weights" 100 "$OUT/bench.log" "$PY" bench/gpu_bench.py decode --weights "$codes" \
    --batches 1 8 32 64 128 --modes graphs --out "$OUT/bench.jsonl"
done
run layer 30 "$OUT/bench.log" "$PY" bench/gpu_bench.py layer --out "$OUT/bench.jsonl"
run decode 130 "$OUT/bench.log" "$PY" bench/gpu_bench.py decode --batches 1 8 64 --out "$OUT/bench.jsonl"
# Qwen3-8B's shape, graphed steps only: its q and k head norms run inside the rotary + cache kernel.
run decode-qwen3 70 "$OUT/bench.log" "$PY" bench/gpu_bench.py decode --architecture qwen3 --batches 1 64 \
  --modes graphs --out "$OUT/bench.jsonl"
# An fp8 KV cache (kv_cache_dtype fp8): decode attention over it (the tensor-core kernel widens each
# stage in shared memory; its floor counts the cache's bytes, half a bfloat16 cache's) and graphed
# decode steps, beside the rows above.
run attention-fp8 40 "$OUT/bench.log" "$PY" bench/gpu_bench.py attention --no-prefill --kv-cache-dtype fp8 \
  --cases 1x512/8192 1x4096 64x512/8192 128x2048 --out "$OUT/bench.jsonl"
run decode-fp8 60 "$OUT/bench.log" "$PY" bench/gpu_bench.py decode --batches 1 64 --modes graphs --kv-cache-dtype fp8 \
  --out "$OUT/bench.jsonl"
# The two-warp decode tile (cuda/paged_attention_launch.cuh; head_dim 128): decode attention with it at
# every batch (KVSERVE_DECODE_WARPS=2), then graphed steps with it where a step's blocks outnumber the
# four-warp tile's places ("auto": batch 64's 512 blocks, one wave instead of two; batches 1 and 8
# keep the four-warp tile), beside the default's rows above. "auto" becomes the default if batch 64
# gains and batches 1 and 8 keep their times.
TWO_WARP_JSONL=/tmp/kvserve-two-warps.jsonl
rm -f "$TWO_WARP_JSONL"
run attention-two-warps 40 "$OUT/bench.log" env KVSERVE_DECODE_WARPS=2 "$PY" bench/gpu_bench.py attention \
  --no-prefill --cases 1x512/8192 8x512/8192 64x512/8192 64x2048/8192 --out "$TWO_WARP_JSONL"
run decode-two-warps 100 "$OUT/bench.log" env KVSERVE_DECODE_WARPS=auto "$PY" bench/gpu_bench.py decode \
  --batches 1 8 64 --modes graphs --out "$TWO_WARP_JSONL"
# With BASELINE set to another kvserve source tree (a commit before a change, carried to the machine
# beside this one), that tree is built too and its attention calls and decode steps are timed in the
# same run, right after this tree's decode steps (the comparison a short budget keeps), and its
# few-rows products; the summary lists them after this tree's, so their ratios come from one machine.
BASELINE_JSONL=/tmp/kvserve-baseline.jsonl
if [ -n "${BASELINE:-}" ]; then
  BASELINE_SITE=/tmp/kvserve-baseline
  run baseline-build 200 "$OUT/build.log" "$PY" -m pip install --no-build-isolation --no-deps --target "$BASELINE_SITE" \
    -Cbuild-dir=/tmp/kvserve-baseline-build -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=90a-real "$BASELINE"
  run baseline-attention 60 "$OUT/bench.log" env PYTHONPATH="$BASELINE_SITE" \
    "$PY" bench/gpu_bench.py attention --no-prefill --out "$BASELINE_JSONL"
  run baseline-linear 40 "$OUT/bench.log" env PYTHONPATH="$BASELINE_SITE" \
    "$PY" bench/gpu_bench.py linear --batches 1 8 --out "$BASELINE_JSONL"
  run baseline-decode 100 "$OUT/bench.log" env PYTHONPATH="$BASELINE_SITE" \
    "$PY" bench/gpu_bench.py decode --batches 1 8 64 --out "$BASELINE_JSONL"
fi
# The graphed steps again with the decode attention's split count forced (the graphs captured anew
# for each): which count the engine's steps want, measured where the attention runs cold.
run decode-splits 120 "$OUT/bench.log" "$PY" bench/gpu_bench.py decode --batches 1 64 --steps 32 \
  --splits 1 2 4 8 16 --out "$OUT/bench.jsonl"
# The sampler on the GPU with 64 and 1024 first candidates for truncated rows (the GPU takes 1024,
# which rarely fall short of top-p's kept set: retracts, when steps are scheduled ahead, follow those).
run sampler 60 "$OUT/bench.log" "$PY" bench/sampler_bench.py --device cuda --batch 64 --vocab 128256 --repeat 10 \
  --first-candidates 64 1024
# The same steps with kvserve's kernels launched the plain way, beside the programmatic launches.
NO_PDL_JSONL=/tmp/kvserve-no-pdl.jsonl
rm -f "$NO_PDL_JSONL"
run decode-no-pdl 100 "$OUT/bench.log" env KVSERVE_PDL=0 "$PY" bench/gpu_bench.py decode --batches 1 8 64 \
  --out "$NO_PDL_JSONL"
run profile 120 "$OUT/bench.log" "$PY" bench/gpu_bench.py profile --batches 1 8 64 --out "$OUT/bench.jsonl" \
  --report "$OUT/profile.txt"
# Batch 1's profile again with the kernels launched the plain way: which kernels the overlap shortened.
rm -f /tmp/kvserve-profile-no-pdl.txt
run profile-no-pdl 60 "$OUT/bench.log" env KVSERVE_PDL=0 "$PY" bench/gpu_bench.py profile --batches 1 \
  --out "$NO_PDL_JSONL" --report /tmp/kvserve-profile-no-pdl.txt
if [ -f /tmp/kvserve-profile-no-pdl.txt ]; then
  { echo; echo "== with KVSERVE_PDL=0"; cat /tmp/kvserve-profile-no-pdl.txt; } >>"$OUT/profile.txt"
fi
run offline 200 "$OUT/bench.log" "$PY" bench/gpu_bench.py offline --out "$OUT/bench.jsonl"

# The same offline run over an fp8 KV cache: twice the tokens in the same memory.
run offline-fp8 200 "$OUT/bench.log" "$PY" bench/gpu_bench.py offline --kv-cache-dtype fp8 --out "$OUT/bench.jsonl"

# WORKLOAD.md's GPU case (the issue's goal is the 256-in, 256-out run above), last: it matters least.
run offline-workload 200 "$OUT/bench.log" "$PY" bench/gpu_bench.py offline --input-len 512 --output-len 128 \
  --out "$OUT/bench.jsonl"

{
  echo "## bench/gpu_check.sh on $("$PY" -c "import torch; print(torch.cuda.get_device_name())" 2>/dev/null)"
  echo
  echo "| stage | exit | seconds |"
  echo "|---|---|---|"
  for s in "${STAGES[@]}"; do set -- $s; echo "| $1 | $2 | $3 |"; done
  echo
  echo "tests: $(grep -E '^[0-9]+ (passed|failed)|(passed|failed|error).* in [0-9.]+s' "$OUT/tests.log" | tail -1)"
  echo
  "$PY" - "$OUT/bench.jsonl" "$NO_PDL_JSONL" "$BASELINE_JSONL" "$TWO_WARP_JSONL" <<'PYEOF'
import json, sys
from pathlib import Path

rows = []
for path, build in zip(map(Path, sys.argv[1:]), ("", " (KVSERVE_PDL=0)", " (BASELINE)", " (KVSERVE_DECODE_WARPS)")):
    if path.exists():
        rows += [dict(json.loads(line), build=build) for line in path.read_text().splitlines()]
goals = {"decode_step_b1_ctx512_graphs": 6.0, "decode_step_b64_ctx512_graphs": 7.7}
print("| measurement | result | floor or reference | goal |")
print("|---|---|---|---|")
for r in rows:
    name = r["name"] + r["build"]
    if name.startswith("copy_bandwidth"):
        print(f"| copy bandwidth{r['build']} | {r['GB_per_s']:.0f} GB/s | 3016 GB/s (issue) | |")
    elif name.startswith("decode_attention"):
        cold = f", {r['cold_ms']:.3f} ms after L2 is overwritten" if "cold_ms" in r else ""
        cold_ratio = f", {r['cold_ratio']:.2f}x" if "cold_ms" in r else ""
        print(f"| {name} | {r['ms']:.3f} ms a call, {r['graph_ms']:.3f} ms in a graph{cold} | {r['floor_ms']:.3f} ms "
              f"({r['ratio']:.2f}x, {r['graph_ratio']:.2f}x{cold_ratio}) | <= 1.5x |")
    elif name.startswith("prefill_attention"):
        print(f"| {name} | {r['ms']:.2f} ms, {r['tflops']:.0f} TFLOP/s | SDPA {r['sdpa_ms']:.2f} ms, "
              f"{r['sdpa_tflops']:.0f} TFLOP/s; error {r['relative_error_vs_sdpa']:.1e} | |")
    elif name.startswith("decode_step"):
        goal = goals.get(name)
        print(f"| {name} | {r['ms']:.2f} ms | {r['floor_ms']:.2f} ms ({r['ratio']:.2f}x) | "
              f"{f'<= {goal} ms' if goal else ''} |")
    elif name.startswith("linear"):
        ours = f", kvserve {r['ours_ms']:.3f} ms ({r['ours_ratio']:.2f}x)" if "ours_ms" in r else ""
        if "fused_ms" in r:
            ours += f"; with the kernel after it fused {r['fused_ms']:.3f} ms, apart {r['unfused_ms']:.3f} ms"
        codes = r["name"].rsplit("_", 1)[-1] in ("uint4", "int8", "fp8")  # the widened weight, then cuBLAS
        print(f"| {name} ({r['n']}x{r['k']}) | {'widened + ' if codes else ''}cuBLAS {r['ms']:.3f} ms{ours} | "
              f"{r['floor_ms']:.3f} ms ({r['ratio']:.2f}x) | |")
    elif name.startswith("layer"):
        print(f"| {name} | {r['graph_ms'] * 1e3:.1f} us a call in a graph | | |")
    elif name.startswith("profile"):
        parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["parts_ms"].items(), key=lambda kv: -kv[1])[:4])
        print(f"| {name} | {r['wall_ms']:.2f} ms a step, GPU busy {r['gpu_busy_ms']:.2f} ms | {parts} | |")
    elif name.startswith("offline"):
        goal = "| vLLM ~12500 (issue) | >= 14000 |" if r["name"] == "offline_1000x256in256out" else "| | |"
        print(f"| {name} | {r['total_tokens_per_s']:.0f} total tok/s ({r['output_tokens_per_s']:.0f} out), "
              f"{r['seconds']:.1f} s {goal}")
if not rows:
    print("| (no benchmark results) | | | |")
PYEOF
} >"$OUT/summary.md" 2>&1
cat "$OUT/summary.md"
