"""What LoRA adapters cost per generated token: one batch of prompts decoded to a fixed length on
the base model, then with one adapter for every prompt, then with four adapters taking turns, the
runs taking turns round by round.

    python bench/lora.py [--preset small] [--rank 16] [--num-prompts 64] [--output-len 64] [--repeat 3]

The adapters (every linear layer of the decoder, random A and B) are written in PEFT's format next to
the preset's checkpoint. EOS is ignored, so each run makes exactly num_prompts x output_len tokens.
Prints a markdown table of output tok/s (best of the rounds) and each run's ratio to the base model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from kvserve import Engine, LoRARequest, SamplingParams
from kvserve.bench.checkpoint import ensure_model
from kvserve.bench.presets import model_preset
from kvserve.bench.turns import output_rate, taking_turns

PROJECTIONS = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}


def write_adapter(model_dir: Path, directory: Path, rank: int, seed: int) -> str:
    """A PEFT LoRA adapter of the preset in model_dir: every projection, A and B ~ N(0, 0.02)."""
    config = json.loads((model_dir / "config.json").read_text())
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    head_dim = hidden // config["num_attention_heads"]
    sizes = {"q_proj": (hidden, hidden), "k_proj": (hidden, config["num_key_value_heads"] * head_dim),
             "v_proj": (hidden, config["num_key_value_heads"] * head_dim), "o_proj": (hidden, hidden),
             "gate_proj": (hidden, inner), "up_proj": (hidden, inner), "down_proj": (inner, hidden)}
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for block, names in PROJECTIONS.items():
            for name in names:
                (fan_in, fan_out), key = sizes[name], f"base_model.model.model.layers.{layer}.{block}.{name}"
                tensors[f"{key}.lora_A.weight"] = 0.02 * torch.randn(rank, fan_in, generator=generator)
                tensors[f"{key}.lora_B.weight"] = 0.02 * torch.randn(fan_out, rank, generator=generator)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, directory / "adapter_model.safetensors")
    (directory / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": sorted(sizes), "bias": "none"}))
    return str(directory)


def run(engine: Engine, prompts: list[str], loras, output_len: int) -> float:
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    return output_rate(lambda: engine.generate(prompts, params, use_tqdm=False, lora_request=loras),
                       len(prompts) * output_len)


def main(argv: list[str] | None = None) -> list[tuple[str, float, list[float]]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    model_preset(args.preset)
    model_dir = ensure_model(args.preset)
    adapters = [LoRARequest(f"adapter-{i}", i + 1, write_adapter(model_dir, model_dir / "lora" / f"r{args.rank}-{i}",
                                                                  args.rank, seed=i)) for i in range(4)]
    engine = Engine(str(model_dir), dtype=args.dtype, enable_lora=True, max_loras=4, max_lora_rank=args.rank)
    prompts = [f"Request {i}: describe the weather in one line." for i in range(args.num_prompts)]
    runs = {"base model": None, "one adapter": adapters[0],
            "four adapters": [adapters[i % 4] for i in range(len(prompts))]}
    run(engine, prompts[:1] * 4, adapters, 8)  # warm-up, and the adapters loaded
    runs = {name: lambda loras=loras: run(engine, prompts, loras, args.output_len) for name, loras in runs.items()}
    return taking_turns(runs, args.repeat, f"{args.preset}, rank {args.rank}", "base model")


if __name__ == "__main__":
    main()
