"""Embeddings with kvserve's pooling runner (vLLM's `LLM(runner="pooling").embed`): a few sentences
pooled into unit vectors, and which of them is closest to a query.

    python examples/python/embeddings.py [MODEL]

MODEL: an embedding model's Hugging Face directory or hub id (Qwen/Qwen3-Embedding-0.6B, say), or
any Llama-family model, pooled by its last token (default: kvserve's default model).
"""

from __future__ import annotations

import sys

import torch

from kvserve import Engine

DOCUMENTS = ["Paris is the capital of France.", "The mitochondria is the powerhouse of the cell.",
             "Python lists grow as items are appended."]
QUERY = "Which city is France's capital?"


def main(model: str | None = None) -> None:
    llm = Engine(model, runner="pooling")
    outputs = llm.embed(DOCUMENTS + [QUERY], use_tqdm=False)
    vectors = torch.tensor([output.outputs.embedding for output in outputs])
    print(f"{len(outputs)} embeddings of {vectors.shape[1]} dimensions")
    scores = vectors[:-1] @ vectors[-1]  # unit vectors: dot products are cosine similarities
    for document, score in zip(DOCUMENTS, scores.tolist()):
        print(f"{score:+.3f} {document}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
