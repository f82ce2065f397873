#!/usr/bin/env bash
# Converts model presets to GGUF with llama.cpp's own converter (after setup_llamacpp.sh).
# usage: convert_gguf.sh OUTTYPE PRESET...    e.g. convert_gguf.sh bf16 tiny small 0.5b
# Run it with kvserve's venv active: that python writes the preset checkpoints on first use.
set -euo pipefail
here="$(dirname "$0")"
. "$here/common.sh"
outtype="$1"; shift
mkdir -p "$gguf_dir"
for preset in "$@"; do
  model_dir="$(python -m kvserve.bench.checkpoint "$preset")"
  out="$gguf_dir/$preset-$outtype.gguf"
  [ -f "$out" ] && { echo "$out"; continue; }
  "$llama_venv/bin/python" "$here/register_pretokenizer.py" "$llama_src/conversion/base.py" "$model_dir"
  "$llama_venv/bin/python" "$llama_src/convert_hf_to_gguf.py" "$model_dir" --outtype "$outtype" \
    --outfile "$out.partial" >"$gguf_dir/$preset-$outtype.log" 2>&1
  mv "$out.partial" "$out"
  echo "$out"
done
