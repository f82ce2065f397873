"""bad_words (SamplingParams): the token sequences of the words a request never generates, and the
tokens a step masks for them.

A word is tokenized as it would open the text ("word") and as it would follow a space (" word"); the
second is kept where the space joins the word's first token (another first token, as many tokens: a
tokenizer of word-initial pieces), as vLLM reads bad words. A step masks a sequence's last token in
each row whose output ends with the sequence's other tokens (a one-token word everywhere). Only the
output counts, as in vLLM: a word begun in the prompt is not followed into the output.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvserve.tokenizer import Tokenizer


def bad_words_token_ids(words: Sequence[str], tokenizer: Tokenizer) -> list[list[int]]:
    """The token sequences of `words` (see the module docstring)."""
    sequences = []
    for word in words:
        bare = tokenizer.encode(word.lstrip(), add_special_tokens=False)
        spaced = tokenizer.encode(" " + word.lstrip(), add_special_tokens=False)
        sequences.append(bare)
        if spaced and spaced[0] != bare[0] and len(spaced) == len(bare):
            sequences.append(spaced)
    return [s for s in sequences if s]


def banned_next(sequences: Sequence[Sequence[int]], output_token_ids: Sequence[int]) -> list[int]:
    """The tokens a row whose output is `output_token_ids` may not take next."""
    banned = []
    for sequence in sequences:
        head = list(sequence[:-1])
        if len(output_token_ids) >= len(head) and list(output_token_ids[len(output_token_ids) - len(head):]) == head:
            banned.append(sequence[-1])
    return banned
