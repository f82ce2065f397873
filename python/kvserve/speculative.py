"""Speculative decoding's configuration: vLLM's `speculative_config`, for its "ngram" method.

    Engine(model, speculative_config={"method": "ngram", "num_speculative_tokens": 4,
                                      "prompt_lookup_max": 4, "prompt_lookup_min": 2})

A decode guesses up to num_speculative_tokens tokens by finding its last n tokens (n from
prompt_lookup_max down to prompt_lookup_min) earlier in its prompt or output, and the model checks
the guesses in the same step, keeping those it agrees with (the C++ scheduler: scheduler.h,
ngram_proposer.h; the sampler samples after each draft as if it were the sequence's). Greedy or
random, the outputs follow the model's distribution exactly: only the number of steps changes (a
seeded request's samples are reproducible, but not those it gets without drafts: each position
verified draws from its generator). It pays where the text repeats what came before (code edits,
quoting, summaries of a given text).

As in vLLM, one of the two lookup bounds stands for both when the other is not given, and 5 for
both when neither is; `disable_by_batch_size` (vLLM's) stops the drafts of a step that starts with
more sequences running than that: a large batch keeps the hardware busy already, and drafts the
model refuses cost it (bench/README.md, "Speculative decoding"). Structured outputs speculate too:
each draft's row is masked by the grammar as it stands after the drafts before it (read ahead on a
copy of the sequence's matcher), so a draft the grammar refuses is never kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from kvserve.sampling_params import is_int

METHODS = ("ngram",)
# The scheduler's bounds (scheduler_config.h).
MAX_SPECULATIVE_TOKENS = 64
MAX_PROMPT_LOOKUP = 1024
DEFAULT_PROMPT_LOOKUP = 5
_KEYS = ("method", "num_speculative_tokens", "prompt_lookup_max", "prompt_lookup_min", "disable_by_batch_size")


@dataclass(frozen=True)
class SpeculativeConfig:
    num_speculative_tokens: int
    prompt_lookup_min: int
    prompt_lookup_max: int
    method: str = "ngram"
    disable_by_batch_size: int | None = None  # no drafts while more sequences run; None: no limit

    @classmethod
    def parse(cls, value: dict | str | SpeculativeConfig | None) -> SpeculativeConfig | None:
        """A config from vLLM's dict (or its JSON text, as --speculative-config takes it); None for None.
        ValueError names what is wrong."""
        if value is None or isinstance(value, SpeculativeConfig):
            return value
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as error:
                raise ValueError(f"speculative_config must be a JSON object, got {value!r}: {error}") from None
        if not isinstance(value, dict):
            raise ValueError(f"speculative_config must be a dict, e.g. {{'method': 'ngram', "
                             f"'num_speculative_tokens': 4}}, got {value!r}")
        unknown = sorted(set(value) - set(_KEYS))
        if unknown:
            raise ValueError(f"speculative_config: unknown keys {unknown} (kvserve speculates by prompt lookup: "
                             f"{list(_KEYS)})")
        method = value.get("method", "ngram")
        if method not in METHODS:
            raise ValueError(f"speculative_config: method must be one of {list(METHODS)} (kvserve has no draft "
                             f"models), got {method!r}")
        k = value.get("num_speculative_tokens")
        if not is_int(k) or not 1 <= k <= MAX_SPECULATIVE_TOKENS:
            raise ValueError(f"speculative_config: num_speculative_tokens must be an integer in "
                             f"[1, {MAX_SPECULATIVE_TOKENS}], got {k!r}")
        low, high = value.get("prompt_lookup_min"), value.get("prompt_lookup_max")
        low = high if low is None else low
        high = low if high is None else high
        low = DEFAULT_PROMPT_LOOKUP if low is None else low
        high = DEFAULT_PROMPT_LOOKUP if high is None else high
        for name, n in (("prompt_lookup_min", low), ("prompt_lookup_max", high)):
            if not is_int(n) or not 1 <= n <= MAX_PROMPT_LOOKUP:
                raise ValueError(f"speculative_config: {name} must be an integer in [1, {MAX_PROMPT_LOOKUP}], "
                                 f"got {n!r}")
        if low > high:
            raise ValueError(f"speculative_config: prompt_lookup_min ({low}) must be <= prompt_lookup_max ({high})")
        limit = value.get("disable_by_batch_size")
        if limit is not None and (not is_int(limit) or not 1 <= limit < 2**31):
            raise ValueError(f"speculative_config: disable_by_batch_size must be an integer >= 1 or None, got {limit!r}")
        return cls(k, low, high, method, limit)

    @staticmethod
    def check_engine(*, pooling: bool, async_scheduling: bool | None) -> None:
        """ValueError for an engine that cannot speculate: a pooling one, or one scheduling ahead."""
        if pooling:
            raise ValueError("speculative_config: a pooling engine computes prompts only, it has no decodes to "
                             "speculate")
        if async_scheduling:
            raise ValueError("async_scheduling and speculative_config: a step's tokens are known only once its "
                             "drafts are checked, so steps with drafts are not scheduled ahead")

    def describe(self) -> str:
        """The engine's log line of it."""
        limit = (f", none while more than {self.disable_by_batch_size} sequences run"
                 if self.disable_by_batch_size else "")
        return (f"speculative decoding by prompt lookup: up to {self.num_speculative_tokens} draft tokens a "
                f"decode, from n-grams of {self.prompt_lookup_min} to {self.prompt_lookup_max} tokens{limit}; "
                f"steps are not scheduled ahead")

    def scheduler_fields(self) -> dict:
        """The SchedulerConfig fields that carry it."""
        return {"num_speculative_tokens": self.num_speculative_tokens, "prompt_lookup_min": self.prompt_lookup_min,
                "prompt_lookup_max": self.prompt_lookup_max,
                "speculative_disable_by_batch_size": self.disable_by_batch_size or 0}
