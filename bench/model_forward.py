"""One forward step of kvserve's Llama model against transformers' on the same random weights.

    python bench/model_forward.py --preset small --dtype bfloat16 --num-reqs 64 --prompt-len 128

prefill: every request's whole prompt in one step (num_reqs * prompt_len tokens), logits of the
last token of each; decode: one new token per request over a cached context of prompt_len.
transformers runs the same batch as [num_reqs, prompt_len] with its DynamicCache. Prints the best of
--repeat runs per side, in milliseconds, as one JSON line. Needs kvserve.ops.paged_attention (the
CPU kernels). Shapes are WORKLOAD.md's presets.
"""

from __future__ import annotations

import argparse
import json
import tempfile

import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from kvserve import ops
from kvserve.bench.machine import call_seconds
from kvserve.loader import load_model
from kvserve.models import AttentionMetadata

# hidden, intermediate, layers, heads, kv heads (vocab 32000)
PRESETS = {"tiny": (256, 688, 4, 4, 2), "small": (512, 1408, 8, 8, 4), "0.5b": (896, 4864, 24, 14, 2)}
BLOCK_SIZE = 16


def best_ms(fn, repeat: int) -> float:
    return round(min(call_seconds(fn, repeat)) * 1e3, 2)


def step_metadata(block_table, start: int, num_new: int) -> tuple[torch.Tensor, AttentionMetadata]:
    """Positions and metadata for num_new tokens per request from position `start` on."""
    num_reqs = block_table.shape[0]
    positions = torch.arange(start, start + num_new)
    slots = block_table.long()[:, positions // BLOCK_SIZE] * BLOCK_SIZE + positions % BLOCK_SIZE
    return positions.repeat(num_reqs), AttentionMetadata(
        slot_mapping=slots.flatten(), block_table=block_table,
        seq_lens=torch.full((num_reqs,), start + num_new, dtype=torch.int32),
        query_start_loc=torch.arange(0, num_reqs * num_new + 1, num_new, dtype=torch.int32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=PRESETS, default="small")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    parser.add_argument("--num-reqs", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if not hasattr(ops, "paged_attention"):
        parser.error("needs the CPU kernels: kvserve.ops.paged_attention is missing from this build")
    dtype = getattr(torch, args.dtype)
    hidden, intermediate, layers, heads, kv_heads = PRESETS[args.preset]
    config = LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=4096, rms_norm_eps=1e-5, architectures=["LlamaForCausalLM"])
    torch.manual_seed(0)
    hf = LlamaForCausalLM(config).to(dtype).eval()
    with tempfile.TemporaryDirectory() as directory:
        hf.save_pretrained(directory)
        model = load_model(directory, dtype=dtype).model

    num_reqs, prompt_len = args.num_reqs, args.prompt_len
    blocks_per_req = prompt_len // BLOCK_SIZE + 1
    block_table = torch.arange(num_reqs * blocks_per_req, dtype=torch.int32).view(num_reqs, blocks_per_req)
    cache_shape = (num_reqs * blocks_per_req, BLOCK_SIZE, kv_heads, hidden // heads)
    kv_caches = [(torch.zeros(cache_shape, dtype=dtype), torch.zeros(cache_shape, dtype=dtype)) for _ in range(layers)]
    prompts = torch.randint(10, 31999, (num_reqs, prompt_len))
    next_ids = torch.randint(10, 31999, (num_reqs,))
    prefill_positions, prefill = step_metadata(block_table, 0, prompt_len)
    decode_positions, decode = step_metadata(block_table, prompt_len, 1)
    last_rows = torch.arange(1, num_reqs + 1) * prompt_len - 1

    def hf_decode():
        hf(next_ids[:, None], past_key_values=cache, logits_to_keep=1)
        cache.crop(-1)

    with torch.inference_mode():
        results = {
            "prefill_ms": {
                "kvserve": best_ms(lambda: model.compute_logits(
                    model(prompts.flatten(), prefill_positions, kv_caches, prefill)[last_rows]), args.repeat),
                "transformers": best_ms(lambda: hf(prompts, past_key_values=DynamicCache(config=config),
                                                   logits_to_keep=1), args.repeat),
            },
            "decode_ms": {
                "kvserve": best_ms(lambda: model.compute_logits(
                    model(next_ids, decode_positions, kv_caches, decode)), args.repeat),
            },
        }
        cache = DynamicCache(config=config)
        hf(prompts, past_key_values=cache)
        results["decode_ms"]["transformers"] = best_ms(hf_decode, args.repeat)
    print(json.dumps({**vars(args), "threads": torch.get_num_threads(), **results}))


if __name__ == "__main__":
    main()
