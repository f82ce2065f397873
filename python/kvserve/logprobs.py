"""Log-probabilities: the tensors the sampler returns, and vLLM's per-position dicts built from them.

vLLM's representation, kept so that vLLM users read the same thing:

    SampleLogprobs = [ {token_id: Logprob(logprob, rank, decoded_token), ...}  # one dict per output token
    PromptLogprobs = [ None, {token_id: Logprob, ...}, ... ]                  # None for the first prompt token

Each dict holds the chosen (or actual prompt) token with its rank, plus the top-N tokens (ranks 1..N);
it has N entries when the chosen token is among the top N, else N + 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


SampleLogprobs = list[dict[int, Logprob]]
PromptLogprobs = list[dict[int, Logprob] | None]


@dataclass
class LogprobsTensors:
    """Log-probabilities of N rows, column 0 the chosen token, then the top-K tokens by logprob:

    token_ids: int32 [N, K + 1]
    logprobs:  float32 [N, K + 1]
    ranks:     int32 [N], the chosen token's rank (1 = most likely; ties count as more likely)
    """

    token_ids: torch.Tensor
    logprobs: torch.Tensor
    ranks: torch.Tensor

    @classmethod
    def from_logprobs(cls, logprobs: torch.Tensor, chosen: torch.Tensor, num_top: int) -> LogprobsTensors:
        """From full log-probabilities `logprobs` float32 [N, vocab] and the chosen ids [N]."""
        chosen = chosen.to(torch.int64).unsqueeze(1)
        chosen_logprobs = logprobs.gather(1, chosen)
        ranks = (logprobs >= chosen_logprobs).sum(1).to(torch.int32)
        if num_top > 0:
            top_logprobs, top_ids = logprobs.topk(num_top, dim=1)
            token_ids = torch.cat([chosen, top_ids], dim=1)
            values = torch.cat([chosen_logprobs, top_logprobs], dim=1)
        else:
            token_ids, values = chosen, chosen_logprobs
        return cls(token_ids.to(torch.int32), values, ranks)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> LogprobsTensors:
        """The same rows with fn applied to each tensor (a copy to the host, say)."""
        return LogprobsTensors(fn(self.token_ids), fn(self.logprobs), fn(self.ranks))

    def cpu(self) -> LogprobsTensors:
        return self.map(torch.Tensor.cpu)

    def to_dicts(
        self, num_logprobs: Sequence[int], decode: Callable[[int], str] | None = None
    ) -> list[dict[int, Logprob]]:
        """vLLM's dicts, one per row; row i keeps its chosen token and its top num_logprobs[i]
        (at most K). `decode` turns a token id into Logprob.decoded_token."""
        token_ids = self.token_ids.tolist()
        values = self.logprobs.tolist()
        ranks = self.ranks.tolist()
        dicts = []
        for ids, lps, rank, num in zip(token_ids, values, ranks, num_logprobs):
            entries = {ids[0]: Logprob(lps[0], rank, decode(ids[0]) if decode else None)}
            for position in range(1, num + 1):
                token_id = ids[position]
                entries[token_id] = Logprob(lps[position], position, decode(token_id) if decode else None)
            dicts.append(entries)
        return dicts


def top_entries(entry: dict[int, Logprob], token_id: int, k: int) -> dict[int, Logprob]:
    """`token_id`'s own log-probability, then `entry`'s k likeliest (ranks 1..k; k = -1: all of
    them): what a request that asked for k sees of an entry made for more."""
    kept = {token_id: entry[token_id]}
    if k == -1:
        return kept | entry
    for other, logprob in entry.items():
        if logprob.rank is not None and logprob.rank <= k:
            kept.setdefault(other, logprob)
    return kept


def prompt_logprobs(logits: torch.Tensor, next_token_ids: torch.Tensor, num_top: int) -> LogprobsTensors:
    """Log-probabilities of a prompt: row j of `logits` [P, vocab] is the model's prediction after
    prompt position j, and next_token_ids[j] (int [P]) the token that actually follows. Computed
    from the raw logits, without sampling parameters, as vLLM does."""
    return LogprobsTensors.from_logprobs(logits.float().log_softmax(dim=-1), next_token_ids, num_top)
