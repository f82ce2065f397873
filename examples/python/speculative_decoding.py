"""Speculative decoding by prompt lookup (vLLM's `speculative_config={"method": "ngram", ...}`): a
chat that asks the model to repeat a paragraph, answered with and without drafts; the answers are
the same tokens, the drafted one in fewer steps.

    python examples/python/speculative_decoding.py [MODEL]

MODEL: a Hugging Face directory, GGUF file or hub id (default: kvserve's default model).
"""

from __future__ import annotations

import sys
import time

from kvserve import Engine, SamplingParams

PARAGRAPH = ("A lighthouse keeper writes the weather in a ledger every hour: wind, sea, visibility and the ships "
             "that pass. After forty years the ledgers fill a room, and no two pages are the same.")
CHAT = [{"role": "user", "content": f"Repeat the following paragraph word for word.\n\n{PARAGRAPH}"}]
NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4, "prompt_lookup_min": 2}


def main(model: str | None = None) -> None:
    params = SamplingParams(temperature=0, max_tokens=96)
    answers = {}
    for label, config in (("without drafts", None), ("with drafts", NGRAM)):
        llm = Engine(model, speculative_config=config)
        llm.chat(CHAT, SamplingParams(max_tokens=4), use_tqdm=False)  # warm-up
        start = time.perf_counter()
        [output] = llm.chat(CHAT, params, use_tqdm=False)
        seconds = time.perf_counter() - start
        answers[label] = output.outputs[0]
        tokens = len(output.outputs[0].token_ids)
        print(f"{label}: {tokens} tokens in {seconds:.2f} s ({tokens / seconds:.0f} tok/s)")
        if config is not None:
            stats = llm.stats()
            print(f"drafts: {stats.num_accepted_tokens} of {stats.num_draft_tokens} accepted, "
                  f"{1 + stats.num_accepted_tokens / max(stats.num_drafts, 1):.2f} tokens a step with drafts")
    same = answers["with drafts"].token_ids == answers["without drafts"].token_ids
    print(f"same answer: {same}")
    print(answers["with drafts"].text)


if __name__ == "__main__":
    main(*sys.argv[1:2])
