#!/usr/bin/env bash
# Quantizes presets' bf16 GGUF files (convert_gguf.sh) with llama.cpp's llama-quantize.
# usage: quantize_gguf.sh TYPE PRESET...    e.g. quantize_gguf.sh Q4_0 small 0.5b
set -euo pipefail
here="$(dirname "$0")"
. "$here/common.sh"
type="$1"; shift
for preset in "$@"; do
  source_gguf="$("$here/convert_gguf.sh" bf16 "$preset" | tail -n 1)"
  out="$gguf_dir/$preset-$(echo "$type" | tr '[:upper:]' '[:lower:]').gguf"
  [ -f "$out" ] && { echo "$out"; continue; }
  "$llama_bin/llama-quantize" "$source_gguf" "$out.partial" "$type" >"$out.log" 2>&1
  mv "$out.partial" "$out"
  echo "$out"
done
