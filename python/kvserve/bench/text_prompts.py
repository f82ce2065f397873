"""Text prompts for servers that take no token ids, of the length the server will see.

Random token ids do not survive a round trip through text: decode(ids) re-tokenizes to other ids,
usually a different number of them (merges form across the ids' boundaries, bytes of a split
character join), e.g. 4073 ids became 6115 tokens. So, as vLLM's random dataset does, the text is
re-encoded and cut or topped up with more random ids until it encodes to the wanted length:

    ids ─decode─► text ─encode─► ids' ── len(ids') == wanted? ── yes ─► send text
                    ▲                     │ no: cut to wanted, or append random ids
                    └──────decode─────────┘ (at most MAX_ROUNDS times)

and the request's length is then counted from the text as the server encodes it (special tokens
such as a BOS included), so that input_lens and every throughput use the length actually served,
even where the rounds ran out short of the wanted length.
"""

from __future__ import annotations

import numpy as np

from kvserve.bench.datasets import LOWEST_TOKEN_ID, SampleRequest
from kvserve.tokenizer import Tokenizer

MAX_ROUNDS = 10
_SEED_TAG = 7  # keeps the top-up ids' stream apart from the dataset's own draw of the same seed


def text_prompt(token_ids: list[int], tokenizer: Tokenizer, rng: np.random.Generator) -> tuple[str, list[int]]:
    """Text that encodes (as a server encodes a completion prompt) to len(token_ids) tokens where
    the rounds get there, and the ids it encodes to."""
    num_special = len(tokenizer.encode("", add_special_tokens=True))  # e.g. the BOS a server adds
    base_vocab = tokenizer.backend.get_vocab_size(with_added_tokens=False)
    wanted = max(1, len(token_ids) - num_special)
    content = list(token_ids[:wanted])
    text = tokenizer.decode(content)
    for _ in range(MAX_ROUNDS):
        content = tokenizer.encode(text, add_special_tokens=False)
        if len(content) == wanted:
            break
        if len(content) > wanted:
            content = content[:wanted]
        else:
            # From the base vocabulary, as the random dataset draws: no added special tokens.
            content += rng.integers(LOWEST_TOKEN_ID, base_vocab - 1, wanted - len(content)).tolist()
        text = tokenizer.decode(content)
    return text, tokenizer.encode(text, add_special_tokens=True)


def text_requests(requests: list[SampleRequest], tokenizer: Tokenizer, seed: int) -> list[SampleRequest]:
    """`requests` with a prompt_text each. Those that have one (a dataset's own text, encoded as
    the server encodes it) are kept; random ones get text_prompt's text and its length."""
    rng = np.random.default_rng((seed, _SEED_TAG))
    out = []
    for request in requests:
        if request.prompt_text is None:
            text, ids = text_prompt(request.prompt_token_ids, tokenizer, rng)
            request = SampleRequest(ids, request.expected_output_len, text, request.model)
        out.append(request)
    return out
