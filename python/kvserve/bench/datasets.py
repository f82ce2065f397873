"""The prompts of a benchmark, as token ids (every engine we compare accepts ids, so no tokenizer
round trip changes a prompt's length; for a server that takes text only, kvserve.bench.text_prompts
makes text of the length the server will see).

- Offline cases: exactly WORKLOAD.md's draw, `default_rng(0).integers(10, 31999, (N, IN))`; for a
  model whose vocab is smaller than 32000 the ids stop below its size instead.
- Serving: vLLM's random dataset. Lengths are uniform integers in [L(1-r), L(1+r)] for the input
  and output lengths L and --random-range-ratio r; token ids are uniform in [10, vocab_size - 1),
  like the offline draw keeping clear of the special tokens at the bottom of the vocab. With
  --random-prefix-len P every prompt opens with the same P random tokens (the prefix cache's
  benchmark), before its own input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOWEST_TOKEN_ID = 10
OFFLINE_SEED = 0
WARMUP_SEED = 1
OFFLINE_ID_END = 31999  # exclusive, as WORKLOAD.md writes it, for every preset's vocab


def offline_prompts(num_prompts: int, input_len: int, vocab_size: int | None = None,
                    seed: int = OFFLINE_SEED) -> np.ndarray:
    """int64 [num_prompts, input_len]: the prompts of case offline-N-IN-OUT (another `seed`: other
    prompts of the same kind)."""
    if num_prompts < 1 or input_len < 1:
        raise ValueError(f"num_prompts={num_prompts}, input_len={input_len}: expected both >= 1")
    end = OFFLINE_ID_END if vocab_size is None else min(OFFLINE_ID_END, vocab_size - 1)
    if end <= LOWEST_TOKEN_ID:
        raise ValueError(f"vocab_size={vocab_size}: expected more than {LOWEST_TOKEN_ID + 1}")
    rng = np.random.default_rng(seed)
    return rng.integers(LOWEST_TOKEN_ID, end, (num_prompts, input_len))


def warmup_prompt(input_len: int, vocab_size: int | None = None) -> np.ndarray:
    """int64 [1, input_len]: the warm-up request's prompt, drawn apart from the benchmark's so that
    the warm-up leaves nothing in the prefix cache that a timed request could hit."""
    return offline_prompts(1, input_len, vocab_size, seed=WARMUP_SEED)


@dataclass(frozen=True)
class SampleRequest:
    prompt_token_ids: list[int]  # as the engine or server sees the prompt: prompt_len counts these
    expected_output_len: int
    # What a server that takes no token ids is sent instead; it encodes to prompt_token_ids.
    # None: not made yet (kvserve.bench.text_prompts makes it when a run needs it).
    prompt_text: str | None = None
    model: str | None = None  # the served model it names (a LoRA adapter's); None: the target's

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)


def _length_range(name: str, length: int, range_ratio: float) -> tuple[int, int]:
    low, high = int(length * (1 - range_ratio)), int(length * (1 + range_ratio))
    if length < 1 or low < 1:
        raise ValueError(f"{name}={length} with range ratio {range_ratio}: expected lengths >= 1")
    return low, high


def random_requests(
    num_prompts: int, input_len: int, output_len: int, range_ratio: float, vocab_size: int, seed: int,
    prefix_len: int = 0,
) -> list[SampleRequest]:
    """vLLM's random draw (module docstring): `prefix_len` shared tokens, then each prompt's own."""
    if num_prompts < 1:
        raise ValueError(f"num_prompts={num_prompts}: expected >= 1")
    if prefix_len < 0:
        raise ValueError(f"random prefix len={prefix_len}: expected >= 0")
    if not 0.0 <= range_ratio < 1.0:
        raise ValueError(f"random range ratio {range_ratio}: expected 0 <= ratio < 1")
    if vocab_size <= LOWEST_TOKEN_ID + 1:
        raise ValueError(f"vocab_size={vocab_size}: expected more than {LOWEST_TOKEN_ID + 1}")
    in_low, in_high = _length_range("random input len", input_len, range_ratio)
    out_low, out_high = _length_range("random output len", output_len, range_ratio)
    rng = np.random.default_rng(seed)
    input_lens = rng.integers(in_low, in_high + 1, num_prompts)
    output_lens = rng.integers(out_low, out_high + 1, num_prompts)
    own = [rng.integers(LOWEST_TOKEN_ID, vocab_size - 1, int(n)).tolist() for n in input_lens]
    # Drawn last: without a prefix the prompts are those of the draw before prefixes existed.
    prefix = rng.integers(LOWEST_TOKEN_ID, vocab_size - 1, prefix_len).tolist() if prefix_len else []
    return [SampleRequest(prefix + ids, int(m)) for ids, m in zip(own, output_lens)]
