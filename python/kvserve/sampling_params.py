"""SamplingParams: how one request is decoded, with vLLM's field names, defaults and meanings.

Every field is validated when the object is built; a bad value raises ValueError naming the field and
the accepted range. Checks that need the model (token ids below the vocabulary size) are in
`check_token_ids`, which the engine calls when a request arrives.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from kvserve.structured_outputs import StructuredOutputsParams

# Temperatures below this are greedy, as in vLLM (dividing logits by ~0 would overflow anyway).
GREEDY_TEMPERATURE = 1e-5
MAX_ABS_LOGIT_BIAS = 100.0
# Seeds are int64, as the server's protocol takes them (sample i of n is seeded with seed + i).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def is_int(value) -> bool:
    """An int, and not a bool (which Python counts as one): what every integer argument takes."""
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(name: str, value, low: int, expected: str) -> None:
    if not is_int(value) or value < low:
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def _token_ids(name: str, value, expected: str, empty_ok: bool = True) -> list[int]:
    """`value` (any iterable of token ids, read once) as a list; ValueError naming `name` otherwise."""
    ids = None if isinstance(value, (str, bytes)) or not isinstance(value, Iterable) else list(value)
    if ids is None or not (ids or empty_ok):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    for token_id in ids:
        _check_int(name, token_id, 0, expected)
    return ids


def _check_float(name: str, value, ok, expected: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


class RequestOutputKind(Enum):
    """What each RequestOutput of a running request carries (vLLM's names): everything so far,
    only what is new since the last one (streaming), or nothing until the request finishes."""

    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


def logprobs_wanted(count: int, vocab_size: int) -> int:
    """The log-probabilities a position gets for a logprobs count: -1 asks for the whole vocabulary."""
    return vocab_size if count == -1 else count


def truncate_prompt(token_ids: list[int], keep: int | None, max_model_len: int) -> list[int]:
    """The last `keep` of a prompt's token ids (truncate_prompt_tokens), or all of them (None, or a
    shorter prompt). -1 keeps as many as the context holds with room for one output token,
    max_model_len - 1 (vLLM keeps max_model_len, which kvserve's scheduler would then refuse: a
    prompt must leave room to generate)."""
    if keep is None:
        return token_ids
    keep = max_model_len - 1 if keep == -1 else keep
    return token_ids[-keep:] if len(token_ids) > keep else token_ids


@dataclass
class SamplingParams:
    """Sampling parameters of one request (vLLM's `SamplingParams`).

    n: number of output sequences for the prompt; sample i draws from seed + i when seeded.
    temperature: 0 is greedy (argmax); otherwise logits are divided by it.
    top_p: keep the most likely tokens whose probability mass reaches top_p (1 = off).
    top_k: keep the k most likely tokens (0 or -1 = off).
    min_p: drop tokens less likely than min_p times the most likely one (0 = off).
    seed: per-request random seed; the same seed gives the same tokens whatever else is batched.
        seed + n - 1 must fit an int64.
    presence_penalty, frequency_penalty: subtracted once / per occurrence, for tokens already
        generated (output only), in [-2, 2].
    repetition_penalty: > 1 discourages tokens seen in the prompt or the output (positive logits
        divided by it, negative ones multiplied), 1 = off.
    stop: a string or strings that end generation (stored as a list); the text never contains
        them unless include_stop_str_in_output.
    stop_token_ids: token ids that end generation (kept in token_ids); None is stored as [].
    ignore_eos: keep generating after the end-of-sequence token.
    max_tokens: the most tokens to generate; None = up to the model's context length.
    min_tokens: end-of-sequence and stop_token_ids are masked until this many tokens exist.
    logprobs: also return the log-probabilities of the top-N tokens at each step, and always of
        the chosen token (0 = only the chosen one; -1 = every token of the vocabulary). The engine
        takes at most its max_logprobs.
    prompt_logprobs: the same for each prompt position.
    logit_bias: token id -> value added to its logit before sampling, in [-100, 100].
    allowed_token_ids: only these token ids may be sampled (every other logit is masked to -inf
        before sampling; logprobs stay those of the model's logits); None = all.
    bad_words: words never generated (vLLM's): a word's last token is masked wherever the output
        ends with the tokens before it, at the start of the text or after a space (bad_words.py).
    structured_outputs: StructuredOutputsParams: the output matches a JSON schema, a regex, one of
        a list of strings or a grammar (tokens the grammar cannot take are masked before sampling, and
        before logprobs, as in vLLM). The grammar decides where the output ends: min_tokens does not
        apply, and allowed_token_ids cannot be combined with it (the two could leave no token).
    truncate_prompt_tokens: keep only the last k prompt tokens (k >= 1; -1 = all the context holds);
        None = the whole prompt.
    skip_special_tokens: leave special tokens out of the text.
    spaces_between_special_tokens: kept for vLLM compatibility; fast tokenizers (the only kind
        kvserve loads) decode special tokens without added spaces, as vLLM does with them.
    include_stop_str_in_output: keep the matched stop string at the end of the text, and the text
        of the EOS or stop token that ended the sequence (left out otherwise, as in vLLM).
    detokenize: False leaves the outputs' text empty and spends nothing on it (vLLM's; its
        benchmarks turn it off); stop strings need the text.
    output_kind: what the engine's per-step outputs carry (see RequestOutputKind).
    """

    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    structured_outputs: StructuredOutputsParams | None = None
    truncate_prompt_tokens: int | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    detokenize: bool = True
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE

    def __post_init__(self) -> None:
        _check_int("n", self.n, 1, "an integer >= 1")
        for name in ("presence_penalty", "frequency_penalty"):
            _check_float(name, getattr(self, name), lambda v: -2.0 <= v <= 2.0, "a number in [-2, 2]")
        _check_float("repetition_penalty", self.repetition_penalty, lambda v: v > 0, "a number > 0")
        _check_float("temperature", self.temperature, lambda v: v >= 0, "a number >= 0 (0 = greedy)")
        _check_float("top_p", self.top_p, lambda v: 0 < v <= 1, "a number in (0, 1]")
        if not is_int(self.top_k) or self.top_k < -1:
            raise ValueError(f"top_k must be an integer >= 1, or 0 or -1 to disable it, got {self.top_k!r}")
        _check_float("min_p", self.min_p, lambda v: 0 <= v <= 1, "a number in [0, 1]")
        if self.seed is not None and not is_int(self.seed):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")
        if self.seed is not None and not INT64_MIN <= self.seed <= INT64_MAX - (self.n - 1):
            raise ValueError(f"seed must be in [-2**63, 2**63 - 1 - (n - 1)] (sample i of n={self.n} is seeded "
                             f"with seed + i, an int64), got {self.seed}")
        self.stop = self._normalize_stop(self.stop)
        self.stop_token_ids = _token_ids("stop_token_ids", [] if self.stop_token_ids is None else self.stop_token_ids,
                                         "a list of token ids (integers >= 0)")
        flags = ("ignore_eos", "skip_special_tokens", "spaces_between_special_tokens", "include_stop_str_in_output",
                 "detokenize")
        for name in flags:
            _check_bool(name, getattr(self, name))
        if self.max_tokens is not None:
            _check_int("max_tokens", self.max_tokens, 1, "an integer >= 1, or None for up to the context length")
        _check_int("min_tokens", self.min_tokens, 0, "an integer >= 0")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens must be at most max_tokens ({self.max_tokens}), got {self.min_tokens}"
            )
        for name in ("logprobs", "prompt_logprobs"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), -1, "an integer >= 0, -1 for the whole vocabulary, or None")
        self._check_logit_bias()
        if self.allowed_token_ids is not None:
            self.allowed_token_ids = _token_ids("allowed_token_ids", self.allowed_token_ids,
                                                "a non-empty list of token ids (integers >= 0)", empty_ok=False)
        if self.bad_words is not None:
            words = [self.bad_words] if isinstance(self.bad_words, str) else self.bad_words
            if not isinstance(words, (list, tuple)) or not all(isinstance(w, str) and w.strip() for w in words):
                raise ValueError(f"bad_words must be a list of words (strings with more than whitespace), "
                                 f"got {self.bad_words!r}")
            self.bad_words = list(words)
        if self.structured_outputs is not None and not isinstance(self.structured_outputs, StructuredOutputsParams):
            raise ValueError(f"structured_outputs must be a StructuredOutputsParams or None, "
                             f"got {self.structured_outputs!r}")
        if self.structured_outputs is not None and self.allowed_token_ids is not None:
            raise ValueError("allowed_token_ids and structured_outputs cannot be combined: the grammar decides "
                             "which tokens may come next")
        if self.truncate_prompt_tokens is not None and (
                not is_int(self.truncate_prompt_tokens) or self.truncate_prompt_tokens < -1
                or self.truncate_prompt_tokens == 0):
            raise ValueError(f"truncate_prompt_tokens must be an integer >= 1, -1 (all the context holds) or None, "
                             f"got {self.truncate_prompt_tokens!r}")
        if not isinstance(self.output_kind, RequestOutputKind):
            raise ValueError(f"output_kind must be a RequestOutputKind, got {self.output_kind!r}")
        if self.top_k == -1:
            self.top_k = 0
        if self.temperature < GREEDY_TEMPERATURE:
            # Greedy ignores the truncation knobs; clearing them keeps the sampler's greedy fast path.
            self.top_p, self.top_k, self.min_p = 1.0, 0, 0.0

    @staticmethod
    def _normalize_stop(stop) -> list[str]:
        if stop is None:
            return []
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, (list, tuple)) or not all(isinstance(s, str) and s for s in stops):
            raise ValueError(f"stop must be a non-empty string or a list of non-empty strings, got {stop!r}")
        return list(stops)

    def _check_logit_bias(self) -> None:
        if self.logit_bias is None:
            return
        if not isinstance(self.logit_bias, dict):
            raise ValueError(f"logit_bias must be a dict of token id -> bias, got {self.logit_bias!r}")
        for token_id, bias in self.logit_bias.items():
            _check_int("logit_bias", token_id, 0, "keyed by token ids (integers >= 0)")
            _check_float(
                f"logit_bias[{token_id}]", bias, lambda v: abs(v) <= MAX_ABS_LOGIT_BIAS, "a number in [-100, 100]"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE

    @property
    def penalized(self) -> bool:
        """Whether any of the repetition, frequency or presence penalties applies."""
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 or self.repetition_penalty != 1.0

    def all_stop_token_ids(self, eos_token_ids: Iterable[int]) -> set[int]:
        """The token ids that end this request: stop_token_ids, plus the model's end-of-sequence
        ids unless ignore_eos. min_tokens masks exactly these."""
        ids = set(self.stop_token_ids)
        if not self.ignore_eos:
            ids.update(eos_token_ids)
        return ids

    def truncated_prompt(self, token_ids: list[int], max_model_len: int) -> list[int]:
        """The prompt token ids this request keeps (truncate_prompt)."""
        return truncate_prompt(token_ids, self.truncate_prompt_tokens, max_model_len)

    def num_logprobs(self, vocab_size: int) -> dict[str, int]:
        """The log-probabilities a position asks for, by field (logprobs, prompt_logprobs; those set),
        -1 read as the vocabulary."""
        counts = {name: getattr(self, name) for name in ("logprobs", "prompt_logprobs")}
        return {name: logprobs_wanted(count, vocab_size) for name, count in counts.items() if count is not None}

    def check_token_ids(self, vocab_size: int) -> None:
        """Raise ValueError when a token id in logit_bias, stop_token_ids or allowed_token_ids, or a
        logprobs count, is outside a vocabulary of `vocab_size` tokens."""
        for name, ids in (("logit_bias", self.logit_bias or ()), ("stop_token_ids", self.stop_token_ids),
                          ("allowed_token_ids", self.allowed_token_ids or ())):
            bad = [i for i in ids if i >= vocab_size]
            if bad:
                raise ValueError(f"{name} has token ids {bad}: expected ids below the vocabulary size {vocab_size}")
        for name in ("logprobs", "prompt_logprobs"):
            count = getattr(self, name)
            if count is not None and count > vocab_size:
                raise ValueError(f"{name} must be at most the vocabulary size {vocab_size}, got {count}")
