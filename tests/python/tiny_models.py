"""Tiny random models of each supported architecture, saved as Hugging Face directories.

    save_tiny_model(directory, "Qwen2ForCausalLM") -> directory with config.json,
        generation_config.json, model.safetensors and the tiny tokenizer (vocab 1000, eos <|im_end|> = 2)

Every parameter is random (norm weights around 1, biases nonzero), so a weight that is loaded into
the wrong place, or not at all, changes the logits. Each architecture brings the feature that sets it
apart: Llama a Llama 3 rope scaling, Mistral a sliding window shorter than the test prompts, Qwen2
q/k/v biases with YaRN, Qwen3 q/k norms and a head_dim that is not hidden_size / num_heads.

    save_repeating_model(directory) -> the tiny Llama whose text repeats itself (speculative decoding's)
    save_tiny_model(directory, "LlamaForSequenceClassification", num_labels=3) -> a tiny classifier
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from transformers import GenerationConfig

from tiny_tokenizer import save_tiny_tokenizer

VOCAB_SIZE = 1000
EOS_TOKEN_ID = 2

_COMMON = dict(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
               eos_token_id=EOS_TOKEN_ID, bos_token_id=None, tie_word_embeddings=False)

TINY_CONFIGS = {
    "LlamaForCausalLM": (transformers.LlamaConfig, dict(
        rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64})),
    "MistralForCausalLM": (transformers.MistralConfig, dict(sliding_window=5, head_dim=16)),
    "Qwen2ForCausalLM": (transformers.Qwen2Config, dict(max_position_embeddings=128,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32})),
    "Qwen3ForCausalLM": (transformers.Qwen3Config, dict(head_dim=32)),
}


def tiny_hf_model(architecture: str, seed: int = 0, **overrides) -> transformers.PreTrainedModel:
    """The transformers model (float32, random weights) that save_tiny_model writes; `architecture`
    may also be the *ForSequenceClassification twin of one of TINY_CONFIGS (overrides: num_labels,
    id2label)."""
    causal = architecture.replace("ForSequenceClassification", "ForCausalLM")
    config_class, extra = TINY_CONFIGS[causal]
    config = config_class(**{**_COMMON, **extra, **overrides})
    config.architectures = [architecture]
    torch.manual_seed(seed)
    model = getattr(transformers, architecture)(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            else:
                param.normal_(0.0, 0.15)
    return model


def save_tiny_model(directory, architecture: str, seed: int = 0, **overrides) -> Path:
    """Write tiny_hf_model(architecture, seed, **overrides) and the tiny tokenizer to `directory`."""
    directory = Path(directory)
    model = tiny_hf_model(architecture, seed, **overrides)
    model.generation_config = GenerationConfig(eos_token_id=EOS_TOKEN_ID, do_sample=True,
                                               temperature=0.7, top_p=0.9)
    model.save_pretrained(directory)
    save_tiny_tokenizer(directory, VOCAB_SIZE)
    return directory


def save_repeating_model(directory) -> Path:
    """The tiny Llama with its attention's output at 1% of its own, so that its next token depends
    mostly on the current one and its text repeats itself in part (as real text quotes itself: what
    prompt lookup guesses), and its logits 8 times its own, so that sampled text repeats too."""
    directory = Path(directory)
    model = tiny_hf_model("LlamaForCausalLM")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(0.01)
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(directory)
    save_tiny_tokenizer(directory, VOCAB_SIZE)
    return directory
