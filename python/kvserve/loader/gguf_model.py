"""Everything kvserve takes from one GGUF file: config, tokenizer and (lazily) the weights."""

from __future__ import annotations

from pathlib import Path

from gguf import GGUFReader

from kvserve.loader.gguf_config import gguf_architecture, model_config_from_gguf
from kvserve.loader.gguf_tokenizer import TokenizerParts, tokenizer_from_gguf
from kvserve.loader.gguf_weights import GgufWeights
from kvserve.model_config import ModelConfig


def read_gguf(path: str | Path) -> tuple[ModelConfig, TokenizerParts, GgufWeights]:
    try:
        reader = GGUFReader(path)
    except (ValueError, OSError) as error:
        raise ValueError(f"{path}: not a readable GGUF file ({error})") from error
    config = model_config_from_gguf(reader)
    return config, tokenizer_from_gguf(reader), GgufWeights(reader, config, gguf_architecture(reader))
