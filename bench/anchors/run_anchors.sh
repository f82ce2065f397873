#!/usr/bin/env bash
# Measures the anchors (vLLM's CPU build, llama.cpp) on WORKLOAD.md's CPU cases in bf16, after
# setup_vllm.sh, setup_llamacpp.sh and `convert_gguf.sh bf16 tiny small 0.5b`. Run it from the repo
# root with kvserve's venv active; results go to bench/results/ (REPEAT rounds, best kept; default 3).
set -euo pipefail
. "$(dirname "$0")/common.sh"
repeat="${REPEAT:-3}"
threads="$(nproc)"
compare() { python bench/compare.py "$@" --engines vllm llama.cpp --repeat "$repeat"; }

# vLLM's thread binding: its default ("auto") against OpenMP threads pinned to every core.
python bench/compare.py offline-256-64-64 --model tiny --engines vllm --vllm-threads-bind auto \
  --repeat "$repeat" --out bench/results/vllm-bind-auto

compare offline-256-64-64 --model tiny
compare offline-64-128-128 --model small
compare offline-64-128-128 --model 0.5b
compare serve-64-128-128@inf --model small
compare serve-64-128-128@4 --model small

# Single-stream decode: llama-bench tg128, and one request of 128 tokens through each engine.
for preset in tiny small 0.5b; do
  "$llama_bin/llama-bench" -m "$gguf_dir/$preset-bf16.gguf" -p 0 -n 128 -t "$threads" -r "$repeat" -o md
  compare offline-1-1-128 --model "$preset"
done
