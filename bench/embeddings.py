"""Embeddings: kvserve's pooling engine against transformers' batched forward (the way
sentence-transformers embeds: batches of 32, the last token's hidden state, normalized), on one
preset's weights, taking turns round by round.

    python bench/embeddings.py [--preset small] [--num-prompts 64] [--input-len 128] [--repeat 3] [--dtype auto]

Prompts are WORKLOAD.md's offline draw, all of one length (no padding for transformers). Prints a
markdown table of prompt tokens per second (best of the rounds) and the largest difference between
the two engines' vectors.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from kvserve import Engine, PoolingParams
from kvserve.bench.checkpoint import ensure_model
from kvserve.bench.datasets import offline_prompts
from kvserve.bench.turns import taking_turns, turns_parser

BATCH = 32  # sentence-transformers' default batch size


def kvserve_vectors(engine: Engine, prompts: list[list[int]]) -> torch.Tensor:
    outputs = engine.embed([{"prompt_token_ids": p} for p in prompts], PoolingParams(), use_tqdm=False)
    return torch.tensor([o.outputs.embedding for o in outputs])


@torch.inference_mode()
def transformers_vectors(model, prompts: list[list[int]]) -> torch.Tensor:
    vectors = []
    for start in range(0, len(prompts), BATCH):
        hidden = model(torch.tensor(prompts[start:start + BATCH])).last_hidden_state
        vectors.append(F.normalize(hidden[:, -1].float(), dim=-1))
    return torch.cat(vectors)


def rate(embed, prompts: list[list[int]]) -> float:
    start = time.perf_counter()
    embed(prompts)
    return sum(len(p) for p in prompts) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> list[tuple[str, float, list[float]]]:
    from transformers import AutoModel

    args = turns_parser(__doc__.splitlines()[0], "--input-len", 128).parse_args(argv)
    directory = args.model or str(ensure_model(args.preset))
    engine = Engine(directory, dtype=args.dtype, runner="pooling", enable_prefix_caching=False)
    model = AutoModel.from_pretrained(directory, dtype=engine.dtype).eval()
    prompts = offline_prompts(args.num_prompts, args.input_len, engine.model_config.vocab_size).tolist()
    ours, theirs = kvserve_vectors(engine, prompts[:BATCH]), transformers_vectors(model, prompts[:BATCH])  # warm-up
    print(f"{engine.dtype}, {args.num_prompts} prompts of {args.input_len} tokens; largest difference between the "
          f"vectors: {(ours - theirs).abs().max().item():.2e}\n")
    runs = {"kvserve": lambda: rate(lambda p: kvserve_vectors(engine, p), prompts),
            "transformers": lambda: rate(lambda p: transformers_vectors(model, p), prompts)}
    return taking_turns(runs, args.repeat, "engine", "transformers", unit="prompt tok/s")


if __name__ == "__main__":
    main()
