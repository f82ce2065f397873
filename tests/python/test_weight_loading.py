"""Loading Hugging Face directories: single and sharded safetensors, dummy weights, dtypes, and
clear errors for checkpoints that do not fit the model."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from kvserve.loader import load as load_module
from kvserve.loader import load_model
from kvserve.models.layers.rms_norm import RMSNorm
from tiny_models import tiny_hf_model


def _params(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _copy_config(source, destination):
    destination.mkdir(exist_ok=True)
    for name in ("config.json", "generation_config.json"):
        shutil.copy(source / name, destination / name)
    return destination


def test_fused_weights_hold_the_checkpoint_projections(tiny_model_dir):
    directory = tiny_model_dir("Qwen2ForCausalLM")
    checkpoint = load_file(directory / "model.safetensors")
    attn = load_model(directory).model.model.layers[1].self_attn
    prefix = "model.layers.1.self_attn"
    for part in ("weight", "bias"):
        expected = torch.cat([checkpoint[f"{prefix}.{p}_proj.{part}"] for p in "qkv"])
        assert torch.equal(getattr(attn.qkv_proj, part), expected)


def test_sharded_checkpoint_loads_like_a_single_file(tmp_path, tiny_model_dir):
    single = load_model(tiny_model_dir("LlamaForCausalLM")).model
    tiny_hf_model("LlamaForCausalLM").save_pretrained(tmp_path, max_shard_size="100KB")
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    assert not (tmp_path / "model.safetensors").exists()
    sharded = _params(load_model(tmp_path).model)
    for name, value in _params(single).items():
        assert torch.equal(sharded[name], value), name


def test_missing_shard_is_named(tmp_path):
    tiny_hf_model("LlamaForCausalLM").save_pretrained(tmp_path, max_shard_size="100KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(ValueError, match=rf"shard\(s\) {shard.name} named by model.safetensors.index.json are missing"):
        load_model(tmp_path)


def test_tensor_in_two_shards_is_named_with_both_files(tmp_path):
    tiny_hf_model("LlamaForCausalLM").save_pretrained(tmp_path, max_shard_size="100KB")
    first, second = sorted(tmp_path.glob("model-*.safetensors"))[:2]
    name = sorted(load_file(first))[0]
    tensors = load_file(second)
    save_file({**tensors, name: load_file(first)[name]}, second, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"checkpoint tensor '{name}' is in both {first.name} and {second.name}; "
                                         r"expected each tensor in one file"):
        load_model(tmp_path)


def test_weight_given_twice_to_the_model_is_an_error(tiny_model_dir):
    directory = tiny_model_dir("LlamaForCausalLM")
    model = load_model(directory).model
    up = load_file(directory / "model.safetensors")["model.layers.0.mlp.up_proj.weight"]
    with pytest.raises(ValueError, match=r"checkpoint tensor 'model.layers.0.mlp.up_proj.weight' appears twice"):
        model.load_weights([("model.layers.0.mlp.up_proj.weight", up)] * 2)


def test_quantized_checkpoint_is_refused_before_its_weights_are_read(tmp_path, tiny_model_dir):
    directory = _copy_config(tiny_model_dir("LlamaForCausalLM"), tmp_path / "fp8")
    config = json.loads((directory / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 3}
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"kvserve cannot read this quantized checkpoint: config.json has "
                                         r"quantization_config \(method 'gptq'\): 3-bit weights"):
        load_model(directory)  # no weights in the directory: the config alone is refused


def test_bfloat16_checkpoint_loads_as_bfloat16_under_auto(tmp_path, monkeypatch):
    monkeypatch.setattr(load_module, "onednn_packs", lambda dtype: True)  # a CPU with AVX-512
    model = tiny_hf_model("Qwen3ForCausalLM").to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.dtype == torch.bfloat16
    assert torch.equal(loaded.model.model.norm.weight, model.model.norm.weight)
    assert load_model(tmp_path, dtype="float32").model.model.norm.weight.dtype == torch.float32


def test_a_cpu_without_fast_bfloat16_runs_bfloat16_checkpoints_in_float32_under_auto(tmp_path, monkeypatch,
                                                                                    caplog):
    monkeypatch.setattr(load_module, "onednn_packs", lambda dtype: dtype != torch.bfloat16)  # AVX2 only
    model = tiny_hf_model("Qwen3ForCausalLM").to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.dtype == torch.float32 and loaded.model.model.norm.weight.dtype == torch.float32
    assert torch.equal(loaded.model.model.norm.weight, model.model.norm.weight.float())
    assert "no AVX-512 bfloat16 path" in caplog.text
    assert load_model(tmp_path, dtype="bfloat16").dtype == torch.bfloat16  # asked for: kept


def test_dummy_weights_need_only_the_config(tmp_path, tiny_model_dir):
    directory = _copy_config(tiny_model_dir("Qwen3ForCausalLM"), tmp_path / "config-only")
    real = _params(load_model(tiny_model_dir("Qwen3ForCausalLM")).model)
    first = load_model(directory, load_format="dummy", dtype="bfloat16")
    params = _params(first.model)
    assert {n: p.shape for n, p in params.items()} == {n: p.shape for n, p in real.items()}
    assert all(p.dtype == torch.bfloat16 for p in params.values())
    for name, module in first.model.named_modules():
        for param in module.parameters(recurse=False):
            if isinstance(module, RMSNorm):
                assert torch.equal(param, torch.ones_like(param)), name
            else:
                assert 0.015 < param.float().std() < 0.025, name
    again = _params(load_model(directory, load_format="dummy", dtype="bfloat16").model)
    other_seed = _params(load_model(directory, load_format="dummy", dtype="bfloat16", seed=1).model)
    name = "model.layers.0.mlp.down_proj.weight"
    assert torch.equal(again[name], params[name]) and not torch.equal(other_seed[name], params[name])


def _write_variant(tmp_path, source, change):
    directory = _copy_config(source, tmp_path / "variant")
    tensors = load_file(source / "model.safetensors")
    change(tensors)
    save_file(tensors, directory / "model.safetensors")
    return directory


@pytest.mark.parametrize("change, message", [
    (lambda t: t.pop("model.layers.1.self_attn.k_proj.weight"),
     r"checkpoint is missing 1 tensor\(s\) of LlamaForCausalLM: model.layers.1.self_attn.k_proj.weight$"),
    (lambda t: [t.pop(f"model.layers.{i}.mlp.{p}_proj.weight") for i, p in [(1, "up"), (0, "gate")]],
     r"missing 2 tensor\(s\) of LlamaForCausalLM: model.layers.0.mlp.gate_proj.weight, "
     r"model.layers.1.mlp.up_proj.weight$"),
    (lambda t: t.pop("model.norm.weight"), r"missing 1 tensor\(s\) of LlamaForCausalLM: model.norm.weight$"),
    (lambda t: t.update({"model.layers.0.self_attn.k_proj.bias": torch.ones(32)}),
     r"checkpoint tensor 'model.layers.0.self_attn.k_proj.bias' matches no parameter of LlamaForCausalLM"),
    (lambda t: t.update({"model.layers.0.mlp.up_proj.weight": torch.ones(95, 64)}),
     r"checkpoint tensor 'model.layers.0.mlp.up_proj.weight': expected shape \[96, 64\], got \[95, 64\]"),
])
def test_checkpoint_that_does_not_fit(tmp_path, tiny_model_dir, change, message):
    directory = _write_variant(tmp_path, tiny_model_dir("LlamaForCausalLM"), change)
    with pytest.raises(ValueError, match=message):
        load_model(directory)


def test_directory_without_weights(tmp_path, tiny_model_dir):
    directory = _copy_config(tiny_model_dir("LlamaForCausalLM"), tmp_path / "no-weights")
    (directory / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"expected model.safetensors or model.safetensors.index.json"):
        load_model(directory)


def test_bad_load_format(tiny_model_dir):
    with pytest.raises(ValueError, match=r"load_format: expected one of \['auto', 'safetensors', 'gguf', 'dummy'\], got 'pt'"):
        load_model(tiny_model_dir("LlamaForCausalLM"), load_format="pt")
    with pytest.raises(ValueError, match=r"load_format 'gguf' does not fit .*: expected 'auto', 'dummy' or 'safetensors'"):
        load_model(tiny_model_dir("LlamaForCausalLM"), load_format="gguf")


def test_unknown_architecture_in_a_directory(tmp_path, tiny_model_dir):
    directory = _copy_config(tiny_model_dir("LlamaForCausalLM"), tmp_path / "gpt2")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError, match=r"'GPT2LMHeadModel' is not supported; supported: LlamaForCausalLM"):
        load_model(directory)
