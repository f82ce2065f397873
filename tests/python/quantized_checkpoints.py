"""Quantized checkpoints written from a tiny model, as the quantizers that publish them pack their
tensors (test_gptq_awq.py: GPTQ and AWQ; test_compressed_tensors.py: llm-compressor's), beside a
float32 checkpoint of the weights their codes stand for (transformers' reference)."""

import json
import shutil
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# The projections that take one input (an act order orders their input features alike).
SAME_INPUT = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "o_proj": "o", "gate_proj": "gate_up",
              "up_proj": "gate_up", "down_proj": "down"}


def pack_words(fields: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """[..., W, 32 / bits] values as int32 words [..., W], the first the lowest bits."""
    words = sum(fields[..., i].numpy().astype(np.uint32) << np.uint32(bits * i) for i in range(32 // bits))
    return torch.from_numpy(np.ascontiguousarray(words).view(np.int32))


# (checkpoint name of a projection, its weight [N, K], the order its input features are quantized in)
#   -> (its tensors by name after the projection's, in place of its weight (a "bias" only where it has
#   none); the weight they stand for, [N, K])
Quantizer = Callable[[str, torch.Tensor, torch.Tensor], tuple[dict[str, torch.Tensor], torch.Tensor]]


def write_quantized(directory, destination, name: str, quantization_config: dict, quantize: Quantizer,
                    act_order: bool = False):
    """(the quantized checkpoint, a float32 one of the weights its codes stand for): `directory`'s with
    each projection quantized by `quantize`, its input features in a random order where `act_order`
    (one for the projections of one input), in their own order otherwise."""
    quantized_dir, reference_dir = destination / name, destination / f"{name}-dequantized"
    shutil.copytree(directory, quantized_dir)
    tensors = load_file(directory / "model.safetensors")
    reference = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    state = reference.state_dict()
    generator, orders = torch.Generator().manual_seed(5), {}
    for weight_name in [n for n in tensors if n.split(".")[-2] in PROJECTIONS and n.endswith(".weight")]:
        weight = tensors.pop(weight_name)
        prefix = weight_name[:-len(".weight")]
        layer, projection = prefix.rsplit(".", 2)[0], prefix.rsplit(".", 1)[1]
        order = torch.arange(weight.shape[1])
        if act_order:
            order = orders.setdefault((layer, SAME_INPUT[projection]), torch.randperm(len(order), generator=generator))
        packed, dequantized = quantize(prefix, weight, order)
        for part, tensor in packed.items():
            tensors.setdefault(f"{prefix}.{part}", tensor)  # a projection's own bias stays
        state[weight_name].copy_(dequantized)
    save_file(tensors, quantized_dir / "model.safetensors")
    config = json.loads((quantized_dir / "config.json").read_text())
    config["quantization_config"] = quantization_config
    (quantized_dir / "config.json").write_text(json.dumps(config))
    reference.save_pretrained(reference_dir)
    return quantized_dir, reference_dir
