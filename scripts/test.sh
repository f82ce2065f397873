#!/usr/bin/env bash
# Sets up everything the whole test suite needs on a fresh machine, then runs it: the C++ core with
# GoogleTest (ctest), the CUDA and HIP compile checks, and the Python package with pytest.
# It is the README's test command and what CI runs (.ci/run). Re-running it is incremental.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: GoogleTest for the C++ tests, hipcc for the HIP compile check.
need=()
[ -f /usr/include/gtest/gtest.h ] || need+=(libgtest-dev)
command -v hipcc >/dev/null || need+=(hipcc)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

# Python: a venv with the CPU build of torch (pinned: a bare `torch` pulls a multi-GB CUDA build),
# the build tools, then kvserve itself as an editable install with a persistent build dir.
[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q torch==2.13.0 scikit-build-core nanobind ninja cmake
pip install -q --no-build-isolation -e ".[test]"

# C++: the core, its unit tests and the find_package consumers (CPU only; CUDA is compiled by the
# Python build above when nvcc exists).
cmake --preset dev >/dev/null
cmake --build --preset dev
ctest --preset dev

python -m pytest tests/python "$@"
