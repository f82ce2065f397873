"""A ShareGPT-like dataset: real conversations as benchmark requests, as `vllm bench` reads them.

The file is JSON Lines, one conversation per line, or one JSON list of them (ShareGPT's own dump):

    {"id": "...", "conversations": [{"from": "human", "value": "prompt"}, {"from": "gpt", "value": "reply"}, ...]}

Each conversation gives one request: its first turn is the prompt (encoded as the engine would
encode it), its second turn's token count the output length, unless a fixed output length is asked
for. As vLLM's ShareGPT dataset: the conversations of two or more turns are shuffled with the seed
(Python's `random.seed(seed); random.shuffle`, so a seed picks the same ones as vLLM's), then taken
in that order, passing over those whose

    prompt < 4 tokens, or reply < 4 tokens (unless a fixed output length is asked for),
    prompt > 1024 tokens, or prompt + reply > 2048 tokens,

and, beyond vLLM, those with an empty turn or no room in max_model_len (the engine would refuse them).
The reply is counted without special tokens (vLLM counts the BOS its tokenizer prepends as an
output token; no model generates one).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from kvserve.bench.datasets import SampleRequest
from kvserve.tokenizer import Tokenizer

# vLLM's ShareGPT filter (vllm.benchmarks.datasets.is_valid_sequence).
MIN_LEN = 4
MAX_PROMPT_LEN = 1024
MAX_TOTAL_LEN = 2048


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


def is_valid_sequence(prompt_len: int, output_len: int, check_output_len: bool = True) -> bool:
    """vLLM's filter: neither too short (MIN_LEN; the output only when `check_output_len`) nor too long."""
    too_short = prompt_len < MIN_LEN or (check_output_len and output_len < MIN_LEN)
    return not too_short and prompt_len <= MAX_PROMPT_LEN and prompt_len + output_len <= MAX_TOTAL_LEN


def sharegpt_requests(conversations: list[dict], num_prompts: int, tokenizer: Tokenizer, output_len: int | None,
                      max_model_len: int, seed: int = 0) -> list[SampleRequest]:
    """`num_prompts` usable ones of `conversations` (read_conversations' entries), in the order the
    seed shuffles them to (see the module docstring)."""
    if num_prompts < 1:
        raise ValueError(f"--num-prompts {num_prompts}: expected >= 1")
    if output_len is not None and output_len < 1:
        raise ValueError(f"--output-len {output_len}: expected >= 1")
    entries = [e for e in conversations if isinstance(e.get("conversations"), list) and len(e["conversations"]) >= 2]
    random.Random(seed).shuffle(entries)  # the same order as vLLM's random.seed(seed); random.shuffle(data)
    requests = []
    for entry in entries:
        turns = entry["conversations"]
        prompt, reply = _turn_text(turns[0]), _turn_text(turns[1])
        if not prompt or not reply:
            continue
        prompt_ids = tokenizer.encode(prompt)
        wanted = output_len if output_len is not None else len(tokenizer.encode(reply, add_special_tokens=False))
        if not is_valid_sequence(len(prompt_ids), wanted, check_output_len=output_len is None):
            continue
        if len(prompt_ids) + wanted > max_model_len:
            continue
        requests.append(SampleRequest(prompt_ids, wanted, prompt))
        if len(requests) == num_prompts:
            return requests
    raise ValueError(f"{len(requests)} usable conversations in the dataset (two turns, prompt and reply of "
                     f"{MIN_LEN}+ tokens, prompt <= {MAX_PROMPT_LEN}, both <= {MAX_TOTAL_LEN} and max_model_len "
                     f"{max_model_len}), fewer than --num-prompts {num_prompts}")
