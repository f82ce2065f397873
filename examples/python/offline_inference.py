"""Offline inference with kvserve's Engine, vLLM's `LLM` API: a batch of prompts, then a chat.

    python examples/python/offline_inference.py [MODEL]

MODEL: a Hugging Face directory, a GGUF file or a hub id (default: kvserve's default model,
SmolLM2-135M-Instruct, fetched once into ~/.cache/kvserve).
"""

from __future__ import annotations

import sys

from kvserve import Engine, SamplingParams


def main(model: str | None = None) -> None:
    llm = Engine(model)
    prompts = ["The capital of France is", "Three things to pack for a day at the beach:", "def fibonacci(n):"]
    # Seeded sampling: the same tokens on every run, whatever else shares the batch.
    params = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=32, seed=0)
    for output in llm.generate(prompts, params):
        print(f"{output.prompt!r} -> {output.outputs[0].text!r}")

    conversation = [{"role": "system", "content": "You answer in one sentence."},
                    {"role": "user", "content": "Why is the sky blue?"}]
    [reply] = llm.chat(conversation, SamplingParams(temperature=0, max_tokens=48), use_tqdm=False)
    print(f"chat -> {reply.outputs[0].text!r} ({reply.outputs[0].finish_reason})")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
