"""A client of `kvserve serve` through the `openai` package (any OpenAI-compatible client works):
a completion, then a streamed chat reply.

    kvserve serve &                                   # serves the default model on port 8000
    python examples/python/openai_client.py [--base-url http://127.0.0.1:8000/v1] [--api-key KEY]
"""

from __future__ import annotations

import argparse

from openai import OpenAI


def main(base_url: str, api_key: str) -> None:
    client = OpenAI(base_url=base_url, api_key=api_key)
    model = client.models.list().data[0].id  # the name the server serves its model under

    completion = client.completions.create(model=model, prompt="The capital of France is", max_tokens=16,
                                           temperature=0)
    print(f"completion -> {completion.choices[0].text!r} ({completion.usage.completion_tokens} tokens)")

    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Name three colours."}], max_tokens=48, stream=True,
        # vLLM's sampling parameters beyond OpenAI's go in extra_body.
        extra_body={"top_k": 20, "repetition_penalty": 1.1}, seed=0)
    print("chat -> ", end="")
    for chunk in stream:
        if chunk.choices:
            print(chunk.choices[0].delta.content or "", end="", flush=True)
    print()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", default="unused", help="the server's --api-key, if it has one")
    args = parser.parse_args()
    main(args.base_url, args.api_key)
