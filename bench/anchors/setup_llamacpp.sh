#!/usr/bin/env bash
# Builds llama.cpp from the source vendored in the llama-cpp-python sdist (llama-batched-bench,
# llama-bench, llama-server, llama-quantize; GGML_NATIVE on), and a venv for its
# convert_hf_to_gguf.py, all in the cache dir. Convert checkpoints afterwards with convert_gguf.sh
# (and quantize them with quantize_gguf.sh).
set -euo pipefail
. "$(dirname "$0")/common.sh"
mkdir -p "$llama_dir"
[ -x "$llama_venv/bin/python" ] || python3 -m venv "$llama_venv"
if [ ! -d "$llama_src" ]; then
  "$llama_venv/bin/pip" download -q --no-deps --no-binary :all: "llama-cpp-python==$llama_version" -d "$llama_dir"
  tar -xzf "$llama_dir/llama_cpp_python-$llama_version.tar.gz" -C "$llama_dir"
fi
cmake -S "$llama_src" -B "$llama_dir/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF >/dev/null
cmake --build "$llama_dir/build" -j "$(nproc)" --target llama-batched-bench llama-bench llama-server llama-quantize
"$llama_venv/bin/pip" install -q torch==2.13.0 numpy sentencepiece transformers safetensors "$llama_src/gguf-py"
"$llama_bin/llama-bench" --version 2>&1 | tail -n 2
