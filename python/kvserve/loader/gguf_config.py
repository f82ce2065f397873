"""A ModelConfig from a GGUF file's metadata (llama.cpp's key names: "{arch}.block_count", ...)."""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader, LlamaFileType

from kvserve.model_config import ModelConfig, RopeConfig

# GGUF general.architecture -> Hugging Face architecture. llama.cpp writes Mistral models as "llama".
GGUF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}

# Not a weight: Llama 3's rope scaling, read into the config.
ROPE_FACTORS_TENSOR = "rope_freqs.weight"

_MISSING = object()

# Float files keep their dtype under "auto"; a file of quantized blocks names none (load.py picks one).
_FILE_TYPE_DTYPES = {
    LlamaFileType.ALL_F32: torch.float32,
    LlamaFileType.MOSTLY_F16: torch.float16,
    LlamaFileType.MOSTLY_BF16: torch.bfloat16,
}


def _file_dtype(reader: GGUFReader) -> torch.dtype | None:
    """A float file's dtype (its file type's, float32 when it names none); None for a file of quantized
    blocks, which has no dtype of its own."""
    named = _FILE_TYPE_DTYPES.get(gguf_value(reader, "general.file_type", None))
    floats = (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16)
    if named is not None or all(tensor.tensor_type in floats for tensor in reader.tensors):
        return named or torch.float32
    return None


def gguf_value(reader: GGUFReader, key: str, default=_MISSING):
    """The metadata value under `key`; without a default, a missing key is a ValueError."""
    field = reader.fields.get(key)
    if field is None:
        if default is _MISSING:
            raise ValueError(f"{reader.data.filename}: GGUF metadata has no {key!r}")
        return default
    return field.contents()


def gguf_architecture(reader: GGUFReader) -> str:
    arch = gguf_value(reader, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ValueError(f"{reader.data.filename}: GGUF architecture {arch!r} is not supported; "
                         f"supported: {', '.join(GGUF_ARCHITECTURES)}")
    return arch


def model_config_from_gguf(reader: GGUFReader) -> ModelConfig:
    arch = gguf_architecture(reader)
    tensors = {t.name: t for t in reader.tensors}

    def value(key, default=_MISSING):
        return gguf_value(reader, f"{arch}.{key}", default)

    num_heads = value("attention.head_count")
    hidden_size = value("embedding_length")
    num_layers = value("block_count")
    tokens = gguf_value(reader, "tokenizer.ggml.tokens", [])
    window = value("attention.sliding_window", None)
    eos_ids = [gguf_value(reader, f"tokenizer.ggml.{k}_token_id", None) for k in ("eos", "eot", "eom")]
    return ModelConfig(
        architecture=GGUF_ARCHITECTURES[arch],
        vocab_size=value("vocab_size", None) or len(tokens),
        hidden_size=hidden_size,
        intermediate_size=value("feed_forward_length"),
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=value("attention.head_count_kv", num_heads),
        head_dim=value("attention.key_length", hidden_size // num_heads),
        rms_norm_eps=value("attention.layer_norm_rms_epsilon"),
        max_position_embeddings=value("context_length"),
        rope=_rope(value, tensors.get(ROPE_FACTORS_TENSOR)),
        tie_word_embeddings="output.weight" not in tensors,
        attention_bias=arch == "llama" and "blk.0.attn_q.bias" in tensors,
        sliding_windows=(window,) * num_layers,
        checkpoint_dtype=_file_dtype(reader),
        bos_token_id=gguf_value(reader, "tokenizer.ggml.bos_token_id", None),
        eos_token_ids=tuple(dict.fromkeys(i for i in eos_ids if i is not None)),
    )


def _rope(value, factors_tensor) -> RopeConfig:
    theta = value("rope.freq_base", 10000.0)
    if factors_tensor is not None:
        # Llama 3 scaling, precomputed by llama.cpp's converter as one divisor per frequency.
        factors = tuple(float(f) for f in np.asarray(factors_tensor.data, dtype=np.float32))
        return RopeConfig(theta=theta, rope_type="llama3", scaling={"frequency_factors": factors})
    rope_type = value("rope.scaling.type", "none")
    if rope_type == "none":
        return RopeConfig(theta=theta)
    scaling = {"factor": value("rope.scaling.factor")}
    if rope_type == "yarn":
        scaling["original_max_position_embeddings"] = value("rope.scaling.original_context_length")
    return RopeConfig(theta=theta, rope_type=rope_type, scaling=scaling)
