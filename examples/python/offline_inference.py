"""Offline inference with kvserve's Engine, vLLM's `LLM` API: a batch of prompts, a chat, then a
reply held to a JSON schema (structured outputs).

    python examples/python/offline_inference.py [MODEL]

MODEL: a Hugging Face directory, a GGUF file or a hub id (default: kvserve's default model,
SmolLM2-135M-Instruct, fetched once into ~/.cache/kvserve).
"""

from __future__ import annotations

import json
import sys

from kvserve import Engine, SamplingParams, StructuredOutputsParams

CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                         "country": {"type": "string", "maxLength": 40}},
        "required": ["city", "country"], "additionalProperties": False}


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

    # The reply is JSON matching CITY (unless max_tokens cuts it short: finish_reason "length").
    question = [{"role": "user", "content": "Name a large city and its country, as JSON."}]
    only_json = StructuredOutputsParams(json=CITY, disable_any_whitespace=True)
    [answer] = llm.chat(question, SamplingParams(temperature=0, max_tokens=64, structured_outputs=only_json),
                        use_tqdm=False)
    if answer.outputs[0].finish_reason == "stop":
        print(f"json -> {json.loads(answer.outputs[0].text)}")
    else:
        print(f"json -> cut short: {answer.outputs[0].text!r}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
