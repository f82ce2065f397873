"""Prompt inputs, as vLLM accepts them: a string, {"prompt": str}, {"prompt_token_ids": [...]}
(optionally with the "prompt" text it came from), or a list of these. A dict may carry a
"cache_salt": the prefix cache shares blocks only between prompts of equal salts (vLLM's; a secret
salt per user keeps others from learning what is cached from how fast a prompt starts)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Union

from kvserve.tokenizer import Tokenizer

PromptInput = Union[str, dict]


class Prompt(NamedTuple):
    text: str | None
    token_ids: list[int]
    cache_salt: str | None = None


def _one(prompt, tokenizer: Tokenizer | None) -> Prompt:
    if isinstance(prompt, str):
        prompt = {"prompt": prompt}
    if not isinstance(prompt, dict):
        raise ValueError(f"a prompt must be a string or a dict with 'prompt' or 'prompt_token_ids', got {prompt!r:.80}")
    unknown = set(prompt) - {"prompt", "prompt_token_ids", "cache_salt"}
    if unknown:
        raise ValueError(f"prompt dict has unknown keys {sorted(unknown)}: expected 'prompt' and/or 'prompt_token_ids' "
                         f"(and 'cache_salt')")
    cache_salt = prompt.get("cache_salt")
    if cache_salt is not None and (not isinstance(cache_salt, str) or not cache_salt):
        raise ValueError(f"cache_salt must be a non-empty string, got {cache_salt!r:.80}")
    text = prompt.get("prompt")
    token_ids = prompt.get("prompt_token_ids")
    if token_ids is None:
        if not isinstance(text, str):
            raise ValueError(f"prompt must be a string, got {text!r:.80}")
        if tokenizer is None:
            raise ValueError("a text prompt needs a tokenizer: pass prompt_token_ids with skip_tokenizer_init=True")
        token_ids = tokenizer.encode(text)
    else:
        token_ids = list(token_ids)
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in token_ids):
            raise ValueError("prompt_token_ids must be a list of integers")
    if not token_ids:
        raise ValueError("the prompt is empty: expected at least one token")
    return Prompt(text, token_ids, cache_salt)


def normalize_prompts(prompts: PromptInput | Sequence[PromptInput], tokenizer: Tokenizer | None) -> list[Prompt]:
    """(text or None, token ids, cache salt or None) per prompt."""
    if isinstance(prompts, (str, dict)):
        prompts = [prompts]
    if not isinstance(prompts, Sequence) or not prompts:
        raise ValueError("prompts: expected a prompt or a non-empty list of prompts")
    return [_one(p, tokenizer) for p in prompts]


def check_prompt_ids(token_ids: Sequence[int], vocab_size: int) -> None:
    """ValueError for prompt token ids outside the vocabulary."""
    bad = [t for t in token_ids if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"prompt token ids {bad[:8]} are outside the vocabulary [0, {vocab_size})")
