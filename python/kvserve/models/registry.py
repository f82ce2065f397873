"""Which model class serves which Hugging Face architecture name.

Adding an architecture: write models/<name>.py with its class, add one line here, and one to
kvserve.model_config._SLIDING_WINDOW_RULES (how its config.json names sliding-window layers).
Classes are imported on first use, so reading a config does not import every model.
"""

from __future__ import annotations

import importlib

import torch

# architecture name (config.json "architectures") -> (module in kvserve.models, class name)
_MODELS = {
    "LlamaForCausalLM": ("llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("llama", "LlamaForCausalLM"),  # Llama with an optional sliding window
    "Qwen2ForCausalLM": ("qwen2", "Qwen2ForCausalLM"),
    "Qwen3ForCausalLM": ("qwen3", "Qwen3ForCausalLM"),
}
# The same models without their LM head, as transformers saves a base model (an embedding model's
# checkpoint: e5-mistral's MistralModel), for pooling only: their tensors' names lack "model.".
BASE_MODELS = {"LlamaModel": "LlamaForCausalLM", "MistralModel": "MistralForCausalLM", "Qwen2Model": "Qwen2ForCausalLM",
               "Qwen3Model": "Qwen3ForCausalLM"}

# The same models with a classification head (`score`, hidden -> num_labels) on the last token's
# final hidden state instead of the LM head, as transformers saves a classifier, a reward model or
# a cross-encoder: for pooling only (kvserve.classify).
CLASSIFIERS = {"LlamaForSequenceClassification": "LlamaForCausalLM",
               "MistralForSequenceClassification": "MistralForCausalLM",
               "Qwen2ForSequenceClassification": "Qwen2ForCausalLM",
               "Qwen3ForSequenceClassification": "Qwen3ForCausalLM"}
# Architectures without an LM head: they pool, and generate nothing.
POOLING_ONLY = (*BASE_MODELS, *CLASSIFIERS)

SUPPORTED_ARCHITECTURES = tuple(_MODELS)


def causal_architecture(architecture: str) -> str:
    """The architecture with its LM head that `architecture` (maybe a base model or a classifier) is."""
    return BASE_MODELS.get(architecture) or CLASSIFIERS.get(architecture) or architecture


def check_architecture(architecture: str) -> None:
    if causal_architecture(architecture) not in _MODELS:
        raise ValueError(f"architecture {architecture!r} is not supported; "
                         f"supported: {', '.join(SUPPORTED_ARCHITECTURES)} (and for pooling {', '.join(POOLING_ONLY)})")


def model_class(architecture: str) -> type:
    check_architecture(architecture)
    module_name, class_name = _MODELS[causal_architecture(architecture)]
    return getattr(importlib.import_module(f"kvserve.models.{module_name}"), class_name)


def build_model(model_config, dtype: torch.dtype, device: str | torch.device = "cpu", *,
                lm_head: bool = True) -> torch.nn.Module:
    """The model for `model_config`, with uninitialized parameters in `dtype` on `device`: fill them
    with model.load_weights(...) or kvserve.loader.fill_dummy_weights(model), then call
    model.finalize_weights() (kvserve.loader.load_model does all three). lm_head=False (a pooling
    engine's, and always for a base model or a classifier) builds none: a checkpoint's is then skipped."""
    cls = model_class(model_config.architecture)
    with torch.device(device):
        model = cls(model_config, dtype, lm_head=lm_head and model_config.architecture not in POOLING_ONLY)
    return model.eval()
