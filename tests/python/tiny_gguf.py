"""Write a saved tiny model (tiny_models.py) as a GGUF file, the way llama.cpp's converter does:
GGUF tensor names, Llama's q/k rows permuted into interleaved rotary pairs, Llama 3 rope scaling as
a rope_freqs tensor, the tokenizer as token strings + merges + token types, and the chat template."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import torch
import transformers
from safetensors.numpy import load_file
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from tiny_tokenizer import training_text

GGUF_ARCH = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}

_LAYER_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}
_GLOBAL_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def _gguf_name(hf_name: str) -> str:
    base, param = hf_name.rsplit(".", 1)
    if base in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[base]}.{param}"
    _, _, layer, rest = base.split(".", 3)
    return f"blk.{layer}.{_LAYER_NAMES[rest]}.{param}"


def llama_cpp_permute(rows: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's reordering of one head's rows [x-half | y-half] into pairs (x0, y0, x1, y1, ...)."""
    return rows.reshape(num_heads, 2, rows.shape[0] // num_heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


_FILE_TYPES = {gguf.GGMLQuantizationType.F32: gguf.LlamaFileType.ALL_F32,
               gguf.GGMLQuantizationType.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
               gguf.GGMLQuantizationType.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0,
               gguf.GGMLQuantizationType.Q4_1: gguf.LlamaFileType.MOSTLY_Q4_1}


def write_tiny_gguf(directory, path, quantization=gguf.GGMLQuantizationType.F32, pre_tokenizer="smollm",
                    tensor_types=None) -> Path:
    """2-D weights are stored as `quantization` (F32, Q8_0, Q4_0 or Q4_1), or as tensor_types[kind] for
    GGUF tensor kinds it names (e.g. {"attn_v": Q8_0}, as llama.cpp's mixes store some projections
    finer); norms and biases stay F32."""
    directory, path = Path(directory), Path(path)
    config = json.loads((directory / "config.json").read_text())
    arch = GGUF_ARCH[config["architectures"][0]]
    rope = config.get("rope_parameters") or {}
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_key_length(config["head_dim"] if config.get("head_dim") else config["hidden_size"] // config["num_attention_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(rope.get("rope_theta", 10000.0))
    if rope.get("rope_type") == "llama3":
        writer.add_tensor("rope_freqs.weight", _llama3_rope_factors(directory))
    if rope.get("rope_type") == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(rope["factor"])
        writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(_FILE_TYPES[quantization])
    _add_tokenizer(writer, directory, pre_tokenizer)

    heads = {"q_proj": config["num_attention_heads"], "k_proj": config["num_key_value_heads"]}
    for name, tensor in load_file(directory / "model.safetensors").items():
        proj = name.split(".")[-2]
        if arch == "llama" and proj in heads:
            tensor = llama_cpp_permute(tensor, heads[proj])
        gguf_name = _gguf_name(name)
        kind = gguf_name.split(".")[-2]
        stored = (tensor_types or {}).get(kind, quantization)
        if tensor.ndim == 2 and stored != gguf.GGMLQuantizationType.F32:
            writer.add_tensor(gguf_name, gguf.quants.quantize(tensor, stored), raw_dtype=stored)
        else:
            writer.add_tensor(gguf_name, tensor.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _llama3_rope_factors(directory) -> np.ndarray:
    """What llama.cpp stores for Llama 3 rope scaling: one divisor per frequency, here derived from
    transformers' own scaled frequencies."""
    config = transformers.AutoConfig.from_pretrained(directory)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    head_dim = config.head_dim
    plain = 1.0 / (config.rope_parameters["rope_theta"] ** (torch.arange(0, head_dim, 2).float() / head_dim))
    return (plain / scaled).numpy().astype(np.float32)


def _add_tokenizer(writer, directory, pre_tokenizer):
    tokenizer = json.loads((directory / "tokenizer.json").read_text())
    tokenizer_config = json.loads((directory / "tokenizer_config.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    special = {t["content"] for t in tokenizer["added_tokens"] if t["special"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer)
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]])
    writer.add_eos_token_id(vocab[tokenizer_config["eos_token"]])
    writer.add_add_bos_token(False)
    writer.add_chat_template(tokenizer_config["chat_template"])


def write_sentencepiece_gguf(path) -> Path:
    """A GGUF file holding only a Llama-2-style SentencePiece tokenizer (tokenizer.ggml.model "llama"):
    <unk> <s> </s>, the 256 <0xNN> byte tokens, then pieces trained here, each scored by its merge
    rank so that earlier merges score higher."""
    trainer_tokenizer = Tokenizer(models.BPE())
    trainer_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer_tokenizer.train_from_iterator(
        training_text(), trainers.BpeTrainer(vocab_size=700, show_progress=False, limit_alphabet=120))
    trained = trainer_tokenizer.get_vocab()
    pieces = sorted(trained, key=trained.get)
    specials = ["<unk>", "<s>", "</s>"]
    tokens = specials + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + \
        [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * len(pieces)
    scores = [0.0] * (len(specials) + 256) + [-float(rank) for rank in range(len(pieces))]
    writer = gguf.GGUFWriter(Path(path), "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)
