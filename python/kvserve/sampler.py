"""Sampler: logits [N, vocab] + SamplingMetadata -> SamplerOutput (one token per row).

A batch that is only argmaxes (greedy, no bias, mask, penalty or logprobs) reads the logits in the
model dtype as they are (kvserve.ops.argmax); everything else works on a float32 copy.

The order is vLLM's:
    grammar mask (structured outputs: before everything, the logprobs included, as vLLM's model
    runner masks the logits before its sampler sees them)
    -> raw log-probabilities (for `logprobs`: from the logits as the model gave them)
    -> allowed_token_ids mask, logit_bias, banned tokens (min_tokens, bad_words)
    -> penalties (repetition, frequency, presence)
    -> greedy rows: argmax
    -> other rows: / temperature -> min_p -> top_k -> top_p (each on the distribution the previous
       steps left, renormalized) -> one draw by inverse CDF with one uniform per row

One uniform per row, drawn from the row's own generator when seeded, makes a seeded row's tokens
independent of the rest of the batch. Rows with a truncation (top-k, top-p, min-p) work on their
most likely tokens (a partial sort: FIRST_CANDIDATES, or FIRST_CANDIDATES_GPU on a GPU, or the
batch's largest top_k, then 16 times more, then the whole vocabulary) until those contain the kept
set; rows without a truncation sample the whole vocabulary unsorted. Every step is a prefix computation over the sorted
candidates, so the number of candidates a batch needs never changes a row's result. Whether the
first candidates held a row's kept set is the one thing the host must read from the device:
`Sampler()(..., settle=False)` leaves that check, and the rows to redo, to SamplerOutput.settle(),
which a GPU's caller runs when it reads the tokens anyway (and which says which rows changed: a
step scheduled ahead may have decoded the tokens before they settled).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from kvserve import ops
from kvserve.logprobs import LogprobsTensors
from kvserve.sampling_metadata import AllowedTokens, GrammarMask, Penalties, Rows, SamplingMetadata, device_column

# Candidates a truncated row samples from first, on the CPU and on a GPU. A GPU's partial sort costs
# mostly the read of the row, so 1024 candidates cost about what 64 do there, and they hold the kept
# set far more often: a row whose candidates fall short is settled when the tokens are read, and a
# step scheduled ahead that decoded its first token retracts the row (SmolLM2-135M at temperature 1,
# top_p 0.95: 24% of rows retracted with 64 candidates, 2.6% with 1024; bench/README.md).
FIRST_CANDIDATES = 64
FIRST_CANDIDATES_GPU = 1024
CANDIDATES_GROWTH = 16


@dataclass
class Recheck:
    """Rows sampled from their first candidates, to sample again from more where those did not
    hold the row's kept set (`sufficient` false: computed on the device, read by settle())."""

    sufficient: torch.Tensor  # bool [R]
    batch_rows: torch.Tensor  # int64 [R], the rows' places in the batch
    logits: torch.Tensor  # [R, vocab], as the sample saw them
    uniform: torch.Tensor  # [R]
    cuts: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]  # top_k, top_p, min_p
    num_candidates: int


@dataclass
class SamplerOutput:
    sampled_token_ids: torch.Tensor  # int32 [N]
    logprobs: LogprobsTensors | None  # when some row asked for logprobs: K = the batch's largest
    rechecks: list[Recheck] = field(default_factory=list)  # left by Sampler(..., settle=False)
    raw_logprobs: torch.Tensor | None = None  # to redo the logprobs of rows a recheck changes

    def settle(self) -> list[int]:
        """Sample again the rows whose first candidates did not hold their kept set, from more
        candidates, until every row's did (reads the device: on a GPU it waits for the sampler).
        Returns the rows whose token changed."""
        if not self.rechecks:
            return []
        before = self.sampled_token_ids.clone()
        changed = False
        while self.rechecks:
            # Last in, first out: a redo's own rechecks settle right after it wrote its rows.
            check = self.rechecks.pop()
            if bool(check.sufficient.all()):
                continue
            redo = (~check.sufficient).nonzero().squeeze(1)
            choice = _sample_truncated(check.logits[redo], check.uniform[redo],
                                       *(None if t is None else t[redo] for t in check.cuts),
                                       _more_candidates(check.num_candidates, check.logits.shape[1]),
                                       self.rechecks, check.batch_rows[redo])
            self.sampled_token_ids[check.batch_rows[redo]] = choice.to(torch.int32)
            changed = True
        if not changed:
            return []
        if self.logprobs is not None:
            num_top = self.logprobs.token_ids.shape[1] - 1
            self.logprobs = LogprobsTensors.from_logprobs(self.raw_logprobs, self.sampled_token_ids, num_top)
        return (before != self.sampled_token_ids).nonzero().squeeze(1).tolist()


def apply_penalties(logits: torch.Tensor, penalties: Penalties) -> None:
    """vLLM's penalties, in place: repetition (prompt + output tokens: positive logits divided by
    it, negative ones multiplied), then frequency (times the count in the output), then presence
    (once if in the output)."""
    rows, tokens = penalties.seen_tokens
    values = logits[rows, tokens]
    repetition = penalties.repetition[rows]
    # Duplicate (row, token) pairs write the same value, so the order of the writes does not matter.
    logits[rows, tokens] = torch.where(values > 0, values / repetition, values * repetition)
    rows, tokens = penalties.output_tokens
    logits.index_put_((rows, tokens), -penalties.frequency[rows], accumulate=True)
    logits[rows, tokens] = logits[rows, tokens] - penalties.presence[rows]


def apply_allowed_tokens(logits: torch.Tensor, allowed: AllowedTokens) -> None:
    """In place: the restricted rows keep the logits of their allowed tokens, every other is -inf."""
    kept = torch.full((allowed.rows.shape[0], logits.shape[1]), float("-inf"), dtype=logits.dtype,
                      device=logits.device)
    kept[allowed.positions, allowed.token_ids] = logits[allowed.rows[allowed.positions], allowed.token_ids]
    logits[allowed.rows] = kept


def apply_grammar_mask(logits: torch.Tensor, mask: GrammarMask) -> None:
    """In place: the grammar rows keep the logits of the tokens their bitmask sets, every other is
    -inf. The bits are unpacked where the logits are: on the host by numpy (byte by byte, a
    little-endian word's bits in order), on a GPU by shifts (a bitmask is 1/32 of the mask to copy)."""
    num_rows, vocab = mask.bitmask.shape[0], logits.shape[1]
    if logits.is_cuda:
        shifts = torch.arange(32, dtype=torch.int32, device=logits.device)
        allowed = ((mask.bitmask.unsqueeze(2) >> shifts) & 1).view(num_rows, -1)[:, :vocab].bool()
    else:
        bits = np.unpackbits(mask.bitmask.numpy().view(np.uint8), axis=1, bitorder="little")
        allowed = torch.from_numpy(bits[:, :vocab].view(np.bool_))
    refused = torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device)
    if mask.all_rows:
        torch.where(allowed, logits, refused, out=logits)
    else:
        logits[mask.rows] = torch.where(allowed, logits[mask.rows], refused)


def _inverse_cdf(cdf: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Column j of each row with cdf[j-1] <= u * total < cdf[j]: never a zero-weight column."""
    total = cdf[:, -1:]
    target = torch.minimum(uniform.unsqueeze(1) * total, total.nextafter(torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(1)


def _sample_whole_vocab(logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    weights = (logits - logits.max(dim=1, keepdim=True).values).exp_()
    return _inverse_cdf(weights.cumsum_(dim=1), uniform)


def _more_candidates(num_candidates: int, vocab: int) -> int:
    more = num_candidates * CANDIDATES_GROWTH
    return more if more < vocab // 4 else vocab  # a partial sort of a quarter costs about a full sort


def _sample_truncated(logits, uniform, top_k, top_p, min_p, num_candidates: int, rechecks: list[Recheck],
                      batch_rows: torch.Tensor) -> torch.Tensor:
    """Rows with at least one of top_k (vocab = off), top_p (1 = off), min_p (0 = off); each of
    those is a tensor [R] or None. Rows whose candidates may fall short go to `rechecks` with their
    places in the batch, `batch_rows`, for SamplerOutput.settle()."""
    num_rows, vocab = logits.shape
    values, token_ids = logits.topk(num_candidates, dim=1)  # sorted, most likely first
    weights = (values - values[:, :1]).exp()
    everything = num_candidates == vocab
    # `complete`: the candidates hold every token top_k / min_p keeps, so renormalizing over them is exact.
    kept = torch.ones_like(values, dtype=torch.bool)
    complete = torch.full((num_rows,), everything, dtype=torch.bool, device=logits.device)
    truncated = torch.zeros_like(complete)
    if top_k is not None:
        kept &= torch.arange(num_candidates, device=logits.device) < top_k.unsqueeze(1)
        complete |= top_k <= num_candidates
        truncated |= top_k < vocab
    if min_p is not None:
        threshold = values[:, :1] + min_p.log().unsqueeze(1)
        kept &= values >= threshold
        complete |= (min_p > 0) & (values[:, -1] < threshold.squeeze(1))
        truncated |= min_p > 0
    sufficient = complete | ~truncated
    if top_p is not None:
        cdf = (weights * kept).cumsum(dim=1)
        # Mass to reach: of the kept set where it is complete; of the whole vocabulary in rows
        # without top_k / min_p (their candidates need only hold top_p of it).
        whole_mass = (logits.logsumexp(dim=1) - values[:, 0]).exp()
        mass = torch.where(truncated, cdf[:, -1], whole_mass) * top_p
        kept &= (cdf - weights) < mass.unsqueeze(1)
        sufficient = torch.where(truncated, complete, everything | (cdf[:, -1] >= mass))
    choice = token_ids.gather(1, _inverse_cdf((weights * kept).cumsum_(dim=1), uniform).unsqueeze(1)).squeeze(1)
    if not everything:
        rechecks.append(Recheck(sufficient, batch_rows, logits, uniform, (top_k, top_p, min_p), num_candidates))
    return choice


def _sample_random(logits: torch.Tensor, md: SamplingMetadata, rows: Rows | None,
                   rechecks: list[Recheck]) -> torch.Tensor:
    """Sample the rows `rows` (all when None) of logits. Which rows go which way is decided on
    the host (md.truncating); truncated rows that may need more candidates go to `rechecks`."""
    def pick(t):
        return t if t is None or rows is None else t[rows.index]

    row_numbers = rows.host if rows is not None else range(logits.shape[0])
    if rows is not None:
        logits = logits[rows.index]
    logits = logits.div_(pick(md.temperature).unsqueeze(1))
    uniform = torch.rand(logits.shape[0], device=logits.device)
    if md.generators:
        position = {row: j for j, row in enumerate(row_numbers)}
        for row, generator in md.generators.items():
            uniform[position[row]] = torch.rand(1, generator=generator, device=logits.device)[0]
    top_k, top_p, min_p = pick(md.top_k), pick(md.top_p), pick(md.min_p)
    truncating = [md.truncating[row] for row in row_numbers] if md.truncating is not None else []
    if not any(truncating):
        return _sample_whole_vocab(logits, uniform)
    vocab = logits.shape[1]
    first = FIRST_CANDIDATES_GPU if logits.is_cuda else FIRST_CANDIDATES
    num_candidates = min(vocab, max(first, md.max_top_k if md.max_top_k < vocab else 0))
    batch_rows = rows.index if rows is not None else torch.arange(logits.shape[0], device=logits.device)
    if all(truncating):
        return _sample_truncated(logits, uniform, top_k, top_p, min_p, num_candidates, rechecks, batch_rows)
    choice = torch.empty(logits.shape[0], dtype=torch.int64, device=logits.device)
    plain = device_column([j for j, t in enumerate(truncating) if not t], torch.int64, logits.device)
    choice[plain] = _sample_whole_vocab(logits[plain], uniform[plain])
    cut = device_column([j for j, t in enumerate(truncating) if t], torch.int64, logits.device)
    choice[cut] = _sample_truncated(
        logits[cut], uniform[cut], *(None if t is None else t[cut] for t in (top_k, top_p, min_p)), num_candidates,
        rechecks, batch_rows[cut])
    return choice


class Sampler:
    """`Sampler()(logits, metadata)`. logits: [N, vocab] (float32, bfloat16 or float16), on the
    metadata's device; the sampler may overwrite float32 logits (penalties and biases are applied in
    place). With settle=False the output may hold rechecks: call its settle() before reading it."""

    def __call__(self, logits: torch.Tensor, metadata: SamplingMetadata, *, settle: bool = True) -> SamplerOutput:
        if logits.dim() != 2 or not logits.is_floating_point():
            raise ValueError(f"logits must be floating point [num_rows, vocab], got {logits.dtype} {list(logits.shape)}")
        md = metadata
        if md.argmax_only:
            sampled = torch.empty(logits.shape[0], dtype=torch.int32, device=logits.device)
            ops.argmax(sampled, logits)
            return SamplerOutput(sampled, None)
        logits = logits.float()
        if md.grammar_mask is not None:
            apply_grammar_mask(logits, md.grammar_mask)
        raw_logprobs = logits.log_softmax(dim=1) if md.max_num_logprobs is not None else None
        if md.allowed_tokens is not None:
            apply_allowed_tokens(logits, md.allowed_tokens)
        if md.logit_bias is not None:
            rows, tokens, bias = md.logit_bias
            logits.index_put_((rows, tokens), bias, accumulate=True)
        if md.banned is not None:
            logits[md.banned] = float("-inf")
        if md.penalties is not None:
            apply_penalties(logits, md.penalties)
        rechecks: list[Recheck] = []
        if md.all_greedy:
            sampled = logits.argmax(dim=1)
        elif md.random_rows is None:
            sampled = _sample_random(logits, md, None, rechecks)
        else:
            sampled = logits.argmax(dim=1)
            sampled[md.random_rows.index] = _sample_random(logits, md, md.random_rows, rechecks)
        logprobs = None
        if raw_logprobs is not None:
            logprobs = LogprobsTensors.from_logprobs(raw_logprobs, sampled, md.max_num_logprobs)
        output = SamplerOutput(sampled.to(torch.int32), logprobs, rechecks, raw_logprobs if rechecks else None)
        if settle:
            output.settle()
        return output
