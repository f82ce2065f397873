"""Checkpoint tensors of a Hugging Face directory, read one at a time from memory-mapped safetensors.

    model.safetensors                                   one file
    model.safetensors.index.json + model-0000N-of-M     shards, listed by the index's weight_map
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


def safetensors_files(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    index_path = directory / INDEX_NAME
    if index_path.is_file():
        weight_map = json.loads(index_path.read_text()).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index_path}: expected a non-empty 'weight_map' object")
        files = [directory / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ValueError(f"{directory}: shard(s) {', '.join(missing)} named by {INDEX_NAME} are missing")
        return files
    if (directory / SINGLE_NAME).is_file():
        return [directory / SINGLE_NAME]
    raise ValueError(f"{directory}: expected {SINGLE_NAME} or {INDEX_NAME} (kvserve reads safetensors "
                     f"checkpoints), found neither")


def iter_safetensors_weights(directory: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of the checkpoint, in the checkpoint's dtype. A name in two
    shards is an error: which copy the model should hold is not ours to guess."""
    file_of: dict[str, Path] = {}
    for path in safetensors_files(directory):
        with safe_open(path, framework="pt") as file:
            for name in file.keys():
                if name in file_of:
                    raise ValueError(f"{directory}: checkpoint tensor {name!r} is in both {file_of[name].name} "
                                     f"and {path.name}; expected each tensor in one file")
                file_of[name] = path
                yield name, file.get_tensor(name)
