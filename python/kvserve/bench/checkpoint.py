"""Writes a model preset as a Hugging Face checkpoint directory, created on first use:

    <cache>/bench-models/<preset>/
        config.json  generation_config.json  model.safetensors  tokenizer.json  tokenizer_config.json

Weights are N(0, 0.02) (HF's Llama init; norms are ones) from torch's generator seeded with 0, stored
as bfloat16 and untied. They are streamed into the safetensors file tensor by tensor, so that the 8b
preset (16 GB) is written without holding it in memory.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from kvserve.bench.presets import MODEL_PRESETS, ModelPreset, model_preset
from kvserve.bench.tokenizer import BOS_TOKEN_ID, EOS_TOKEN_ID, save_tokenizer

SEED = 0
INIT_STD = 0.02


def cache_dir() -> Path:
    """The root of what benchmarks build outside the repository (override with KVSERVE_CACHE_DIR)."""
    return Path(os.environ.get("KVSERVE_CACHE_DIR", Path.home() / ".cache" / "kvserve"))


def hf_config(p: ModelPreset) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": p.hidden_size,
        "intermediate_size": p.intermediate_size,
        "num_hidden_layers": p.num_hidden_layers,
        "num_attention_heads": p.num_attention_heads,
        "num_key_value_heads": p.num_key_value_heads,
        "head_dim": p.head_dim,
        "vocab_size": p.vocab_size,
        "max_position_embeddings": p.max_position_embeddings,
        "rope_theta": p.rope_theta,
        "rope_scaling": None,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "initializer_range": INIT_STD,
        "bos_token_id": BOS_TOKEN_ID,
        "eos_token_id": EOS_TOKEN_ID,
        "torch_dtype": "bfloat16",
        "use_cache": True,
    }


def weight_shapes(p: ModelPreset) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of HF's LlamaForCausalLM, in the order they are generated."""
    h, q, kv = p.hidden_size, p.num_attention_heads * p.head_dim, p.num_key_value_heads * p.head_dim
    shapes = {"model.embed_tokens.weight": (p.vocab_size, h)}
    for i in range(p.num_hidden_layers):
        layer = f"model.layers.{i}"
        shapes |= {
            f"{layer}.input_layernorm.weight": (h,),
            f"{layer}.self_attn.q_proj.weight": (q, h),
            f"{layer}.self_attn.k_proj.weight": (kv, h),
            f"{layer}.self_attn.v_proj.weight": (kv, h),
            f"{layer}.self_attn.o_proj.weight": (h, q),
            f"{layer}.post_attention_layernorm.weight": (h,),
            f"{layer}.mlp.gate_proj.weight": (p.intermediate_size, h),
            f"{layer}.mlp.up_proj.weight": (p.intermediate_size, h),
            f"{layer}.mlp.down_proj.weight": (h, p.intermediate_size),
        }
    shapes |= {"model.norm.weight": (h,), "lm_head.weight": (p.vocab_size, h)}
    return shapes


def _write_safetensors(path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    # safetensors: u64 header length, JSON header (name → dtype, shape, byte range), raw data.
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes.items():
        nbytes = 2 * int(torch.Size(shape).numel())
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    generator = torch.Generator().manual_seed(SEED)
    with open(path, "wb") as f:
        f.write(len(header_bytes).to_bytes(8, "little"))
        f.write(header_bytes)
        for name, shape in shapes.items():
            if len(shape) == 1:
                weight = torch.ones(shape, dtype=torch.bfloat16)
            else:
                weight = torch.empty(shape).normal_(0.0, INIT_STD, generator=generator).to(torch.bfloat16)
            f.write(weight.view(torch.int16).numpy().tobytes())


def write_checkpoint(preset: ModelPreset, directory: Path) -> None:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(hf_config(preset), indent=2) + "\n")
    generation = {"bos_token_id": BOS_TOKEN_ID, "eos_token_id": EOS_TOKEN_ID, "do_sample": False}
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    save_tokenizer(directory, preset.vocab_size, preset.max_position_embeddings)
    _write_safetensors(directory / "model.safetensors", weight_shapes(preset))


def ensure_model(name: str, root: Path | None = None) -> Path:
    """The checkpoint directory of preset `name`, written on first use under `root`
    (default: <cache_dir()>/bench-models). A half-written directory is never left behind."""
    preset = model_preset(name)
    directory = (root or cache_dir() / "bench-models") / name
    if not directory.is_dir():
        partial = directory.with_name(f".{name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        try:
            write_checkpoint(preset, partial)
            try:
                partial.rename(directory)
            except OSError:
                if not directory.is_dir():  # not a concurrent writer that finished first
                    raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return directory


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Write (once) and print the checkpoint dir of model presets.")
    parser.add_argument("presets", nargs="+", choices=list(MODEL_PRESETS))
    for name in parser.parse_args(argv).presets:
        print(ensure_model(name))


if __name__ == "__main__":
    main()
