"""Checkpoints in: Hugging Face directories (safetensors), hub ids, GGUF files, the default model."""

from kvserve.loader.default_model import default_model_path, kvserve_cache_dir
from kvserve.loader.dummy_weights import fill_dummy_weights
from kvserve.loader.tokenizer_parts import TokenizerParts
from kvserve.loader.load import LOAD_FORMATS, LoadedModel, load_model
from kvserve.loader.model_source import resolve_model_path

__all__ = ["LOAD_FORMATS", "LoadedModel", "TokenizerParts", "default_model_path", "fill_dummy_weights",
           "kvserve_cache_dir", "load_model", "resolve_model_path"]
