"""What the engine needs to know about a checkpoint, read from a Hugging Face directory.

`ModelConfig.from_pretrained(directory)` reads config.json and generation_config.json. Both the
configs written by transformers < 5 (`rope_theta` + `rope_scaling`, `torch_dtype`) and by
transformers >= 5 (`rope_parameters`, `dtype`) are understood. GGUF files build the same object from
their metadata (kvserve.loader.gguf_config).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from kvserve.models.registry import CLASSIFIERS, causal_architecture, check_architecture
from kvserve.quantization import CHECKPOINT_ONLY, checkpoint_quantization

if TYPE_CHECKING:
    from kvserve.loader.int_scheme import IntScheme

# Names accepted for `dtype`, as vLLM accepts them.
_DTYPES_BY_NAME = {
    "float32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "half": torch.float16,
}

# Each supported rope type -> the scaling keys it needs (as transformers' rope validation requires
# them). Llama 3's may instead come as precomputed `frequency_factors` (GGUF files).
_ROPE_REQUIRED_KEYS = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "yarn": ("factor", "original_max_position_embeddings"),
}
SUPPORTED_ROPE_TYPES = tuple(_ROPE_REQUIRED_KEYS)

# generation_config.json keys that become default sampling parameters, under vLLM's names.
_SAMPLING_DEFAULTS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "max_tokens",
}


def sampling_defaults(generation: dict, strict: bool = False) -> dict:
    """The default sampling parameters that generation_config.json's keys set, under vLLM's names
    (max_new_tokens is max_tokens); `strict`: ValueError for a key that sets none."""
    if strict:
        unknown = sorted(set(generation) - set(_SAMPLING_DEFAULTS))
        if unknown:
            raise ValueError(f"generation config keys {unknown} set no sampling default; the keys are "
                             f"{sorted(_SAMPLING_DEFAULTS)}")
    return {ours: generation[theirs] for theirs, ours in _SAMPLING_DEFAULTS.items()
            if generation.get(theirs) is not None}


def dtype_from_name(name: str | torch.dtype, what: str = "dtype") -> torch.dtype:
    """A torch dtype from a name such as "bfloat16" (or a torch.dtype passed through)."""
    if isinstance(name, torch.dtype) and name in _DTYPES_BY_NAME.values():
        return name
    if isinstance(name, str) and name in _DTYPES_BY_NAME:
        return _DTYPES_BY_NAME[name]
    raise ValueError(f"{what}: expected 'auto' or one of {sorted(_DTYPES_BY_NAME)}, got {name!r}")


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding parameters. `scaling` holds the extra keys of the scaled types
    (factor, low_freq_factor, original_max_position_embeddings, beta_fast, ...); GGUF files give
    Llama 3's scaling as precomputed `frequency_factors` instead (inv_freq[i] / factors[i])."""

    theta: float = 10000.0
    rope_type: str = "default"
    scaling: dict = field(default_factory=dict)

    def __post_init__(self):
        problem = _rope_problem(self.rope_type, self.scaling)
        if problem:
            raise ValueError(problem)


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    rope: RopeConfig = field(default_factory=RopeConfig)
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    # Per layer: the attention window W (a token sees the W positions up to its own), or None.
    sliding_windows: tuple[int | None, ...] = ()
    checkpoint_dtype: torch.dtype | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    # Sampling defaults from generation_config.json, keyed by SamplingParams field names.
    default_sampling: dict = field(default_factory=dict)
    # The embedding lengths a Matryoshka model's vectors may be cut to (config.json's
    # matryoshka_dimensions; () for any, where it says is_matryoshka); None: not one.
    matryoshka_dimensions: tuple[int, ...] | None = None
    # A classifier's labels by class index (config.json's id2label; registry.CLASSIFIERS); None: not one.
    labels: tuple[str, ...] | None = None
    # vLLM's classifier_from_token: a causal LM's checkpoint read as a classifier of one class, whose
    # logit is its LM head's for the one token given, or the second's less the first's (["no", "yes"]:
    # Qwen3-Reranker's relevance); None: the checkpoint has its own score head.
    classifier_from_token: tuple[str, ...] | None = None
    # "fp8": the checkpoint's decoder weights are e4m3 codes with scales (kvserve.quantization); "gptq",
    # "awq" or "compressed-tensors": integer codes of weight_scheme; None: not quantized.
    weight_quantization: str | None = None
    # A GPTQ, AWQ or integer compressed-tensors checkpoint's scheme: bits, groups, zero points, act order.
    weight_scheme: IntScheme | None = None

    def __post_init__(self):
        check_architecture(self.architecture)
        if not self.sliding_windows:
            object.__setattr__(self, "sliding_windows", (None,) * self.num_hidden_layers)
        if len(self.sliding_windows) != self.num_hidden_layers:
            raise ValueError(f"sliding_windows: expected {self.num_hidden_layers} entries (one per layer), "
                             f"got {len(self.sliding_windows)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                             f"num_key_value_heads ({self.num_key_value_heads})")

    @property
    def max_model_len(self) -> int:
        """The longest context the model takes, as vLLM derives it: max_position_embeddings, times
        the rope's factor where the scaling stretches the positions (linear; yarn from
        original_max_position_embeddings). A llama3 config's max_position_embeddings is already
        the stretched length."""
        scaling = self.rope.scaling
        if self.rope.rope_type == "linear":
            return int(self.max_position_embeddings * scaling["factor"])
        if self.rope.rope_type == "yarn":
            return int(scaling["original_max_position_embeddings"] * scaling["factor"])
        return self.max_position_embeddings

    def resolve_dtype(self, dtype: str | torch.dtype = "auto") -> torch.dtype:
        """The engine dtype: "auto" takes the checkpoint's own (float32 when it names none)."""
        if isinstance(dtype, str) and dtype == "auto":
            return self.checkpoint_dtype or torch.float32
        return dtype_from_name(dtype)

    @classmethod
    def from_pretrained(cls, directory: str | Path, overrides: dict | None = None) -> ModelConfig:
        """The config of a Hugging Face directory; `overrides` (vLLM's hf_overrides) replace or add
        config.json's top-level keys."""
        directory = Path(directory)
        config_path = directory / "config.json"
        if not config_path.is_file():
            raise ValueError(f"{directory}: expected a Hugging Face model directory with config.json, found none")
        hf = {**json.loads(config_path.read_text()), **(overrides or {})}
        generation_path = directory / "generation_config.json"
        generation = json.loads(generation_path.read_text()) if generation_path.is_file() else {}
        return cls.from_hf_dicts(hf, generation, source=str(config_path))

    @classmethod
    def from_hf_dicts(cls, hf: dict, generation: dict | None = None, source: str = "config.json") -> ModelConfig:
        generation = generation or {}
        architectures = hf.get("architectures") or []
        if len(architectures) != 1:
            raise ValueError(f"{source}: expected one entry in 'architectures', got {architectures!r}")
        check_architecture(architectures[0])
        weight_quantization = checkpoint_quantization(hf.get("quantization_config"), source)
        weight_scheme = None
        if weight_quantization in CHECKPOINT_ONLY:
            from kvserve.loader.int_scheme import int_scheme  # kvserve.loader imports this module

            weight_scheme = int_scheme(hf["quantization_config"], source)
        activation = hf.get("hidden_act", "silu")
        if activation != "silu":
            raise ValueError(f"{source}: hidden_act: expected 'silu', got {activation!r}")
        num_layers = _required(hf, "num_hidden_layers", source)
        num_heads = _required(hf, "num_attention_heads", source)
        hidden_size = _required(hf, "hidden_size", source)
        checkpoint_dtype = hf.get("dtype") or hf.get("torch_dtype")
        return cls(
            architecture=architectures[0],
            vocab_size=_required(hf, "vocab_size", source),
            hidden_size=hidden_size,
            intermediate_size=_required(hf, "intermediate_size", source),
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=hf.get("num_key_value_heads") or num_heads,
            head_dim=hf.get("head_dim") or hidden_size // num_heads,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            max_position_embeddings=_required(hf, "max_position_embeddings", source),
            rope=_rope_from_hf(hf, source),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=bool(hf.get("attention_bias", False)),
            mlp_bias=bool(hf.get("mlp_bias", False)),
            sliding_windows=_SLIDING_WINDOW_RULES[causal_architecture(architectures[0])](hf, num_layers),
            checkpoint_dtype=dtype_from_name(checkpoint_dtype, f"{source}: dtype") if checkpoint_dtype else None,
            bos_token_id=generation.get("bos_token_id", hf.get("bos_token_id")),
            eos_token_ids=_eos_ids(hf.get("eos_token_id"), generation.get("eos_token_id")),
            default_sampling=sampling_defaults(generation),
            matryoshka_dimensions=(tuple(hf["matryoshka_dimensions"]) if hf.get("matryoshka_dimensions")
                                   else () if hf.get("is_matryoshka") else None),
            labels=_labels(hf, source) if architectures[0] in CLASSIFIERS else None,
            classifier_from_token=_from_tokens(hf, architectures[0], source),
            weight_quantization=weight_quantization,
            weight_scheme=weight_scheme,
        )


def _from_tokens(hf: dict, architecture: str, source: str) -> tuple[str, ...] | None:
    tokens = hf.get("classifier_from_token")
    if tokens is None:
        return None
    if architecture not in CLASSIFIERS:
        raise ValueError(f"{source}: classifier_from_token reads a causal LM as a classifier: expected a "
                         f"*ForSequenceClassification architecture (hf_overrides' \"architectures\"), "
                         f"got {architecture!r}")
    if not isinstance(tokens, list) or len(tokens) not in (1, 2) or not all(isinstance(t, str) for t in tokens):
        raise ValueError(f"{source}: classifier_from_token must be a list of one or two tokens (e.g. [\"no\", "
                         f"\"yes\"]), got {tokens!r}")
    return tuple(tokens)


def _labels(hf: dict, source: str) -> tuple[str, ...]:
    """A classifier's labels, as transformers reads them: id2label, else num_labels of LABEL_i (2 by
    default); one class where its logit comes from tokens (classifier_from_token)."""
    if hf.get("classifier_from_token") is not None:
        return ("LABEL_0",)
    id2label = hf.get("id2label")
    if id2label:
        indices = sorted(int(k) for k in id2label)
        if indices != list(range(len(indices))):
            raise ValueError(f"{source}: id2label: expected the classes 0..{len(indices) - 1}, got {sorted(id2label)}")
        return tuple(str(id2label[str(i)] if str(i) in id2label else id2label[i]) for i in indices)
    return tuple(f"LABEL_{i}" for i in range(hf.get("num_labels", 2)))


def _required(hf: dict, key: str, source: str):
    if hf.get(key) is None:
        raise ValueError(f"{source}: missing required key {key!r}")
    return hf[key]


def _rope_problem(rope_type: str, scaling: dict) -> str | None:
    """What is wrong with a rope type and its scaling keys, or None."""
    if rope_type not in _ROPE_REQUIRED_KEYS:
        return f"rope type: expected one of {list(SUPPORTED_ROPE_TYPES)}, got {rope_type!r}"
    if rope_type == "llama3" and scaling.get("frequency_factors") is not None:
        return None
    required = _ROPE_REQUIRED_KEYS[rope_type]
    missing = [key for key in required if scaling.get(key) is None]
    if missing:
        return f"rope type {rope_type!r} needs keys {list(required)}, missing {missing}"
    return None


def _rope_from_hf(hf: dict, source: str) -> RopeConfig:
    # transformers >= 5 writes one `rope_parameters` dict holding rope_theta; older configs have
    # `rope_theta` beside `rope_scaling` (whose type key was once called "type").
    where = "rope_parameters" if hf.get("rope_parameters") else "rope_scaling"
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = params.pop("rope_theta", None) or hf.get("rope_theta", 10000.0)
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    if rope_type in ("llama3", "yarn"):
        params.setdefault("original_max_position_embeddings", hf["max_position_embeddings"])
    theta = float(theta)
    try:
        return RopeConfig(theta=theta, rope_type=rope_type, scaling=params)  # checks the type and its keys
    except ValueError as e:
        raise ValueError(f"{source}: {where}: {e}") from None


# Which layers attend through a sliding window, per architecture, as transformers decides it (its
# config classes and their defaults), so that a config.json means what it means there.
def _no_window(hf: dict, num_layers: int) -> tuple[int | None, ...]:
    return (None,) * num_layers  # LlamaConfig has no window; a `sliding_window` key is ignored


def _mistral_windows(hf: dict, num_layers: int) -> tuple[int | None, ...]:
    # MistralConfig: every layer, 4096 when the key is absent, none when null; layer_types is ignored.
    return (hf.get("sliding_window", 4096),) * num_layers


def _qwen_windows(hf: dict, num_layers: int) -> tuple[int | None, ...]:
    # Qwen2Config / Qwen3Config: no window unless use_sliding_window (default false). With it, the
    # layers layer_types marks "sliding_attention" (transformers >= 5), else (older configs) the
    # layers from max_window_layers (default 28) on.
    window = hf.get("sliding_window", 4096) if hf.get("use_sliding_window", False) else None
    if window is None:
        return (None,) * num_layers
    first = hf.get("max_window_layers", 28)
    layer_types = hf.get("layer_types") or ["sliding_attention" if i >= first else "full_attention"
                                            for i in range(num_layers)]
    return tuple(window if kind == "sliding_attention" else None for kind in layer_types)


# One entry for each architecture of kvserve.models.registry (a test checks that none is missing).
_SLIDING_WINDOW_RULES = {
    "LlamaForCausalLM": _no_window,
    "MistralForCausalLM": _mistral_windows,
    "Qwen2ForCausalLM": _qwen_windows,
    "Qwen3ForCausalLM": _qwen_windows,
}


def _eos_ids(*values) -> tuple[int, ...]:
    ids: list[int] = []
    for value in values:
        for token in [value] if isinstance(value, int) else value or []:
            if token not in ids:
                ids.append(token)
    return tuple(ids)
