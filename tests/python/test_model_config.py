"""ModelConfig: what is read from config.json / generation_config.json, and the errors on bad input."""

import json
import re

import pytest
import torch

from kvserve.model_config import ModelConfig, RopeConfig
from kvserve.models import SUPPORTED_ARCHITECTURES


def _hf(**overrides):
    base = dict(architectures=["LlamaForCausalLM"], vocab_size=128, hidden_size=64, intermediate_size=96,
                num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=512)
    return {**base, **overrides}


def test_tiny_models_read_back(tiny_model_dir):
    config = ModelConfig.from_pretrained(tiny_model_dir("Qwen3ForCausalLM"))
    assert (config.architecture, config.vocab_size, config.hidden_size, config.intermediate_size) == \
        ("Qwen3ForCausalLM", 1000, 64, 96)
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (2, 4, 2)
    assert config.head_dim == 32  # explicit, not hidden_size // num_attention_heads
    assert config.checkpoint_dtype == torch.float32 and config.eos_token_ids == (2,)
    assert config.default_sampling == {"temperature": 0.7, "top_p": 0.9}
    assert ModelConfig.from_pretrained(tiny_model_dir("MistralForCausalLM")).sliding_windows == (5, 5)


def test_transformers_5_rope_parameters(tiny_model_dir):
    rope = ModelConfig.from_pretrained(tiny_model_dir("LlamaForCausalLM")).rope
    assert rope == RopeConfig(theta=10000.0, rope_type="llama3", scaling={
        "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64})


def test_older_config_keys():
    config = ModelConfig.from_hf_dicts(
        _hf(rope_theta=500000.0, rope_scaling={"type": "linear", "factor": 2.0}, torch_dtype="bfloat16",
            num_key_value_heads=2, eos_token_id=[7, 8], bos_token_id=1),
        {"eos_token_id": 9, "max_new_tokens": 32, "top_k": 20})
    assert config.rope == RopeConfig(theta=500000.0, rope_type="linear", scaling={"factor": 2.0})
    assert config.checkpoint_dtype == torch.bfloat16
    assert config.head_dim == 16 and config.num_key_value_heads == 2
    assert config.eos_token_ids == (7, 8, 9) and config.bos_token_id == 1
    assert config.default_sampling == {"top_k": 20, "max_tokens": 32}
    assert config.max_model_len == 1024  # max_position_embeddings 512 stretched by the linear factor 2


def test_yarn_defaults_original_context_to_max_positions():
    config = ModelConfig.from_hf_dicts(_hf(rope_scaling={"rope_type": "yarn", "factor": 4.0}))
    assert config.rope.scaling["original_max_position_embeddings"] == 512
    assert config.max_model_len == 2048


def test_llama3_scaling_keeps_max_position_embeddings_as_the_context():
    config = ModelConfig.from_hf_dicts(_hf(rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}))
    assert config.max_model_len == 512


@pytest.mark.parametrize("architecture, fields, expected", [
    # Mistral: every layer; MistralConfig's default window when the key is absent; layer_types ignored.
    ("MistralForCausalLM", dict(sliding_window=4096), (4096, 4096, 4096)),
    ("MistralForCausalLM", dict(sliding_window=None), (None, None, None)),
    ("MistralForCausalLM", dict(), (4096, 4096, 4096)),
    ("MistralForCausalLM", dict(sliding_window=64, layer_types=["full_attention"] * 3), (64, 64, 64)),
    # Llama has no window: the key is ignored, as transformers' LlamaConfig ignores it.
    ("LlamaForCausalLM", dict(sliding_window=64), (None, None, None)),
    ("LlamaForCausalLM", dict(sliding_window=64, layer_types=["sliding_attention"] * 3), (None, None, None)),
    # Qwen2/Qwen3: only with use_sliding_window (default false), from max_window_layers or layer_types.
    ("Qwen2ForCausalLM", dict(sliding_window=64), (None, None, None)),
    ("Qwen3ForCausalLM", dict(sliding_window=64, max_window_layers=0), (None, None, None)),
    ("Qwen2ForCausalLM", dict(sliding_window=64, use_sliding_window=False, max_window_layers=1), (None, None, None)),
    ("Qwen2ForCausalLM", dict(sliding_window=64, use_sliding_window=True, max_window_layers=1), (None, 64, 64)),
    ("Qwen3ForCausalLM", dict(sliding_window=64, use_sliding_window=True), (None, None, None)),  # 28 layers full
    ("Qwen2ForCausalLM", dict(use_sliding_window=True, max_window_layers=2), (None, None, 4096)),
    ("Qwen3ForCausalLM", dict(sliding_window=64, use_sliding_window=True, max_window_layers=3,
                              layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
     (64, None, 64)),
    ("Qwen2ForCausalLM", dict(sliding_window=64, layer_types=["sliding_attention"] * 3), (None, None, None)),
])
def test_sliding_window_per_layer(architecture, fields, expected):
    assert ModelConfig.from_hf_dicts(_hf(architectures=[architecture], **fields)).sliding_windows == expected


def test_every_architecture_has_a_sliding_window_rule():
    from kvserve.model_config import _SLIDING_WINDOW_RULES

    assert set(_SLIDING_WINDOW_RULES) == set(SUPPORTED_ARCHITECTURES)


def test_dtype_resolution():
    config = ModelConfig.from_hf_dicts(_hf(dtype="float16"))
    assert config.resolve_dtype("auto") == torch.float16
    assert config.resolve_dtype("bfloat16") == torch.bfloat16
    assert config.resolve_dtype("float") == torch.float32
    assert config.resolve_dtype(torch.float32) == torch.float32
    assert ModelConfig.from_hf_dicts(_hf()).resolve_dtype("auto") == torch.float32
    with pytest.raises(ValueError, match=r"dtype: expected 'auto' or one of .*'bfloat16'.*, got 'int8'"):
        config.resolve_dtype("int8")
    with pytest.raises(ValueError, match=r"got torch.float64"):
        config.resolve_dtype(torch.float64)


def test_unknown_architecture_lists_the_supported_ones():
    with pytest.raises(ValueError, match=r"architecture 'GPT2LMHeadModel' is not supported; supported: "
                                         r"LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM"):
        ModelConfig.from_hf_dicts(_hf(architectures=["GPT2LMHeadModel"]))
    assert set(SUPPORTED_ARCHITECTURES) == {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                                            "Qwen3ForCausalLM"}


@pytest.mark.parametrize("fields, message", [
    (dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
     r"^config.json: rope_scaling: rope type: expected one of \['default', 'linear', 'llama3', 'yarn'\], "
     r"got 'dynamic'$"),
    (dict(rope_parameters={"rope_type": "longrope", "rope_theta": 1e4}),
     r"^config.json: rope_parameters: rope type: expected one of .*, got 'longrope'$"),
    (dict(rope_parameters={"rope_type": "linear", "rope_theta": 1e4}),
     r"^config.json: rope_parameters: rope type 'linear' needs keys \['factor'\], missing \['factor'\]$"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}),
     r"^config.json: rope_scaling: rope type 'llama3' needs keys \['factor', 'low_freq_factor', 'high_freq_factor', "
     r"'original_max_position_embeddings'\], missing \['low_freq_factor', 'high_freq_factor'\]$"),
    (dict(rope_scaling={"type": "yarn", "factor": None}), r"rope type 'yarn' needs keys .*, missing \['factor'\]$"),
    (dict(quantization_config={"quant_method": "fp8", "weight_block_size": [128, 128]}),
     r"^config.json: kvserve cannot read this quantized checkpoint: config.json has quantization_config "
     r"\(method 'fp8'\): block-wise scales"),
    (dict(quantization_config={"quant_method": "gptq", "bits": 3}), r"quantization_config \(method 'gptq'\): 3-bit"),
    (dict(quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True}),
     r"quantization_config \(method 'bitsandbytes'\)"),
    (dict(hidden_act="gelu"), r"hidden_act: expected 'silu', got 'gelu'"),
    (dict(num_hidden_layers=None), r"missing required key 'num_hidden_layers'"),
    (dict(architectures=[]), r"expected one entry in 'architectures', got \[\]"),
    (dict(num_key_value_heads=3), r"num_attention_heads \(4\) must be a multiple of num_key_value_heads \(3\)"),
    (dict(torch_dtype="float64"), r"dtype: expected .*, got 'float64'"),
])
def test_bad_configs(fields, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_hf_dicts(_hf(**fields))


def test_missing_or_unreadable_directory(tmp_path):
    with pytest.raises(ValueError, match=r"expected a Hugging Face model directory with config.json"):
        ModelConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(_hf()))
    assert ModelConfig.from_pretrained(tmp_path).eos_token_ids == ()


def test_rope_errors_name_the_config_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_hf(rope_parameters={"rope_type": "linear"})))
    source = re.escape(str(tmp_path / "config.json"))
    with pytest.raises(ValueError, match=rf"^{source}: rope_parameters: rope type 'linear' "
                                         r"needs keys \['factor'\], missing \['factor'\]$"):
        ModelConfig.from_pretrained(tmp_path)


def test_rope_config_built_directly_checks_its_keys():
    with pytest.raises(ValueError, match=r"rope type 'yarn' needs keys \['factor', "
                                         r"'original_max_position_embeddings'\], "
                                         r"missing \['original_max_position_embeddings'\]"):
        RopeConfig(rope_type="yarn", scaling={"factor": 2.0})
    assert RopeConfig(rope_type="llama3", scaling={"frequency_factors": (1.0, 2.0)}).rope_type == "llama3"
