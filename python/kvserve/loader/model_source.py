"""Where a model named by the user lives on disk.

    None                 -> kvserve's default model (a GGUF file in kvserve's cache)
    path/to/file.gguf    -> that file
    path/to/directory    -> a Hugging Face model directory
    Org/Name             -> that hub repository's snapshot: the local Hugging Face cache first,
                            then a download of the files kvserve reads
"""

from __future__ import annotations

import re
from pathlib import Path

from kvserve.loader.default_model import default_model_path

# The files kvserve reads from a hub repository (no .bin / .pt / .gguf duplicates), less the
# duplicates of the weights that kvserve never reads (as vLLM leaves them out): Mistral repos'
# consolidated.safetensors (the whole model again, ~14 GB for a 7B, beside the index's shards) and
# Llama repos' original/ (Meta's format).
HUB_FILE_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt"]
HUB_IGNORE_PATTERNS = ["consolidated*.safetensors", "original/*"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model_path(model: str | Path | None, *, hub_cache_dir: str | Path | None = None,
                       revision: str | None = None) -> Path:
    """The local file or directory for `model` (see the module docstring)."""
    if model is None:
        return default_model_path()
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"model {str(model)!r}: expected a .gguf file or a Hugging Face directory")
        return path
    if isinstance(model, str) and _HUB_ID.match(model):
        return _hub_snapshot(model, hub_cache_dir, revision)
    raise ValueError(f"model {str(model)!r}: no such file or directory, and not a hub id of the form 'Org/Name'")


def hub_files_to_fetch(repo_files: list[str]) -> list[str]:
    """Which of a hub repository's files (paths in the repository) a download fetches: the same
    filter, on the same patterns, that snapshot_download applies."""
    from huggingface_hub.utils import filter_repo_objects

    return list(filter_repo_objects(repo_files, allow_patterns=HUB_FILE_PATTERNS,
                                    ignore_patterns=HUB_IGNORE_PATTERNS))


def _hub_snapshot(repo_id: str, cache_dir, revision) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    kwargs = dict(repo_id=repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=HUB_FILE_PATTERNS,
                  ignore_patterns=HUB_IGNORE_PATTERNS)
    try:
        return Path(snapshot_download(**kwargs, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    try:
        return Path(snapshot_download(**kwargs))
    except Exception as error:  # network, authentication, missing repository: one message for all
        raise ValueError(f"model {repo_id!r}: not in the local Hugging Face cache and could not be "
                         f"downloaded ({type(error).__name__}: {error})") from error
