# Sourced by the anchor scripts: where the anchors live. Everything they build stays in this cache
# dir, outside the repository (override with KVSERVE_CACHE_DIR).
cache_dir="${KVSERVE_CACHE_DIR:-$HOME/.cache/kvserve}"
anchors_dir="$cache_dir/anchors"
vllm_venv="$anchors_dir/vllm-venv"
llama_version="0.3.36"   # llama-cpp-python sdist that vendors the llama.cpp we build
llama_dir="$anchors_dir/llama.cpp"
llama_src="$llama_dir/llama_cpp_python-$llama_version/vendor/llama.cpp"
llama_bin="$llama_dir/build/bin"
llama_venv="$anchors_dir/llama-venv"
gguf_dir="$anchors_dir/gguf"
mkdir -p "$anchors_dir"
