"""A ShareGPT-like dataset: real conversations as benchmark requests, as `vllm bench` reads them.

The file is JSON Lines, one conversation per line, or one JSON list of them (ShareGPT's own dump):

    {"id": "...", "conversations": [{"from": "human", "value": "prompt"}, {"from": "gpt", "value": "reply"}, ...]}

Each conversation gives one request: its first turn is the prompt (encoded as the engine would
encode it), its second turn's token count the output length, unless a fixed output length is asked
for. Conversations are taken in file order; those with fewer than two turns, an empty prompt or
reply, or no room in max_model_len are passed over.
"""

from __future__ import annotations

import json
from pathlib import Path

from kvserve.bench.datasets import SampleRequest
from kvserve.tokenizer import Tokenizer


def read_conversations(path: Path) -> list[dict]:
    if not path.is_file():
        raise ValueError(f"--dataset {path}: no such file (expected 'random' or a ShareGPT-like .json/.jsonl)")
    text = path.read_text()
    try:
        if text.lstrip().startswith("["):
            entries = json.loads(text)
        else:
            entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise ValueError(f"--dataset {path}: not JSON Lines nor a JSON list ({e})") from None
    if not all(isinstance(entry, dict) for entry in entries):
        raise ValueError(f"--dataset {path}: expected each entry to be an object with 'conversations'")
    return entries


def _turn_text(turn) -> str | None:
    return turn.get("value") if isinstance(turn, dict) and isinstance(turn.get("value"), str) else None


def sharegpt_requests(conversations: list[dict], num_prompts: int, tokenizer: Tokenizer, output_len: int | None,
                      max_model_len: int) -> list[SampleRequest]:
    """The first `num_prompts` usable ones of `conversations` (read_conversations' entries; see the
    module docstring)."""
    if num_prompts < 1:
        raise ValueError(f"--num-prompts {num_prompts}: expected >= 1")
    if output_len is not None and output_len < 1:
        raise ValueError(f"--output-len {output_len}: expected >= 1")
    requests = []
    for entry in conversations:
        turns = entry.get("conversations")
        if not isinstance(turns, list) or len(turns) < 2:
            continue
        prompt, reply = _turn_text(turns[0]), _turn_text(turns[1])
        if not prompt or not reply:
            continue
        prompt_ids = tokenizer.encode(prompt)
        wanted = output_len if output_len is not None else len(tokenizer.encode(reply, add_special_tokens=False))
        if wanted < 1 or len(prompt_ids) + wanted > max_model_len:
            continue
        requests.append(SampleRequest(prompt_ids, wanted))
        if len(requests) == num_prompts:
            return requests
    raise ValueError(f"{len(requests)} usable conversations in the dataset (two turns that fit max_model_len "
                     f"{max_model_len}), fewer than --num-prompts {num_prompts}")
