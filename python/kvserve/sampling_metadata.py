"""SamplingMetadata: one step's per-row sampling parameters as tensors, built from the batch.

Row i is logits row i: one sequence whose next token is sampled this step. Per row the caller
passes the request's SamplingParams, its output token ids so far, its prompt token ids (a list, or
an int64 array: the engine passes one built once a request, as penalties read the whole prompt
every step), and its torch.Generator (None unless the request is seeded; see `request_generator`).
Everything a row does not use stays None, so an all-greedy batch without extras costs one argmax.

    temperature  float32 [N]            1.0 in greedy rows; None when all rows are greedy
    random_rows  Rows                   the rows sampled at random; None when all rows are greedy or none is
    top_k        int64 [N]              vocab_size where off; None when no row uses it
    top_p        float32 [N]            1.0 where off; None when no row uses it
    min_p        float32 [N]            0.0 where off; None when no row uses it
    truncating   [N] bools, on the host: which rows top_k, top_p or min_p cut; None when no row does
    max_top_k    the random rows' largest top_k (vocab_size if one has none), 0 when no row uses it
    generators   {row: torch.Generator} seeded rows
    logit_bias   (rows int64 [B], token ids int64 [B], bias float32 [B]) or None
    banned       (rows int64 [S], token ids int64 [S]) or None: tokens masked: stop tokens under
                 min_tokens, and bad words' last tokens where the output ends with the rest (bad_words.py)
    allowed_tokens  AllowedTokens or None: the rows restricted to their allowed_token_ids
    grammar_mask GrammarMask or None: the rows of structured outputs, restricted to what their
                 grammar takes next
    penalties    Penalties or None
    max_num_logprobs  the largest `logprobs` of the batch, None when no row asks for them

What decides the sampler's path (which rows are random, which are cut) is known from the
parameters, so it is kept on the host too: on a GPU the sampler then never waits for the device to
tell it (what the logits decide, how many candidates hold top_p's mass, SamplerOutput.settle reads).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from kvserve.bad_words import banned_next
from kvserve.grammar import GrammarMatcher
from kvserve.sampling_params import SamplingParams


def request_generator(params: SamplingParams, index: int = 0, device="cpu") -> torch.Generator | None:
    """The generator of sample `index` (0..n-1) of a request: seeded with seed + index, as vLLM
    does, so that the n samples differ; None for unseeded requests (the global RNG is used)."""
    if params.seed is None:
        return None
    return torch.Generator(device=device).manual_seed(params.seed + index)


def _to_device(tensor: torch.Tensor, device) -> torch.Tensor:
    """A host tensor on `device`. To a GPU through pinned memory, without waiting: the metadata is
    built while the step's forward pass runs, and a synchronous copy would wait for all of it (and
    hold back the rest of the build and the sampler's launches until then)."""
    device = torch.device(device)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def device_column(values, dtype, device) -> torch.Tensor:
    """A 1-D tensor of `values` on `device`, copied without waiting for it (_to_device)."""
    return _to_device(torch.tensor(values, dtype=dtype), device)


def _flat_index(rows: Sequence[int], token_lists: Sequence[Sequence[int]], device) -> tuple[torch.Tensor, ...]:
    """(row ids, token ids) int64 for every token of token_lists[j] in row rows[j] (lists, or int64
    arrays taken as they are)."""
    arrays = [np.asarray(tokens, dtype=np.int64) for tokens in token_lists]
    lengths = np.fromiter(map(len, arrays), dtype=np.int64, count=len(arrays))
    row_ids = np.repeat(np.asarray(rows, dtype=np.int64), lengths)
    token_ids = np.concatenate(arrays) if arrays else np.empty(0, dtype=np.int64)
    return _to_device(torch.from_numpy(row_ids), device), _to_device(torch.from_numpy(token_ids), device)


@dataclass
class Penalties:
    """vLLM's penalties, for the rows that use any. Output occurrences are listed once per
    occurrence (frequency) and once per distinct token (presence); repetition covers prompt and
    output tokens. Each tuple is (row ids, token ids), int64."""

    output_tokens: tuple[torch.Tensor, torch.Tensor]
    seen_tokens: tuple[torch.Tensor, torch.Tensor]
    frequency: torch.Tensor  # float32 [N]
    presence: torch.Tensor  # float32 [N]
    repetition: torch.Tensor  # float32 [N]

    @classmethod
    def build(cls, params, output_token_ids, prompt_token_ids, device) -> Penalties | None:
        rows = [i for i, p in enumerate(params) if p.penalized]
        if not rows:
            return None
        outputs = [np.asarray(output_token_ids[i], dtype=np.int64) for i in rows]
        # Each row's prompt, then its output: a row's tokens in two pieces (their order is no matter).
        return cls(
            output_tokens=_flat_index(rows, outputs, device),
            seen_tokens=_flat_index([i for i in rows for _ in range(2)],
                                    [piece for i, out in zip(rows, outputs) for piece in (prompt_token_ids[i], out)],
                                    device),
            frequency=device_column([p.frequency_penalty for p in params], torch.float32, device),
            presence=device_column([p.presence_penalty for p in params], torch.float32, device),
            repetition=device_column([p.repetition_penalty for p in params], torch.float32, device),
        )


@dataclass
class Rows:
    """Some of the batch's rows: their numbers on the host, in order, and as an index on the device."""

    host: list[int]
    index: torch.Tensor  # int64 [len(host)]

    @classmethod
    def of(cls, rows: list[int], device) -> Rows:
        return cls(rows, device_column(rows, torch.int64, device))


@dataclass
class AllowedTokens:
    """The rows with allowed_token_ids: every other token of theirs is masked. (positions, token ids)
    is a flat index into logits[rows]: position j is row rows[j].

        rows       int64 [R]   batch rows, each once
        positions  int64 [A]   0..R-1, one per allowed id
        token_ids  int64 [A]
    """

    rows: torch.Tensor
    positions: torch.Tensor
    token_ids: torch.Tensor

    @classmethod
    def build(cls, params, device) -> AllowedTokens | None:
        rows = [i for i, p in enumerate(params) if p.allowed_token_ids is not None]
        if not rows:
            return None
        positions, token_ids = _flat_index(range(len(rows)), [params[i].allowed_token_ids for i in rows], device)
        return cls(device_column(rows, torch.int64, device), positions, token_ids)


@dataclass
class GrammarMask:
    """The rows that follow a grammar (structured outputs), and the tokens each may take next:
    a bitmask, bit t % 32 of int32 word t // 32 for token t (kvserve.grammar).

        rows     int64 [G]      batch rows, each once
        bitmask  int32 [G, W]   W = ceil(vocab / 32), of the larger of the model's and the
                                tokenizer's vocabularies (the sampler reads the logits' width)
    """

    rows: torch.Tensor
    bitmask: torch.Tensor
    all_rows: bool = False  # rows is every row of the batch, in order

    @classmethod
    def build(cls, grammars: Sequence[GrammarMatcher | None], output_token_ids, device,
              drafts: Sequence[Sequence[int]] | None = None) -> GrammarMask | None:
        """`drafts`: per row, the last of its output_token_ids that are draft tokens (speculative
        decoding), which the matcher reads ahead of the sequence without keeping."""
        rows = [i for i, grammar in enumerate(grammars) if grammar is not None]
        if not rows:
            return None
        # One engine's matchers share a tokenizer, and so the width of their rows.
        bitmask = np.empty((len(rows), grammars[rows[0]].num_words), dtype=np.int32)
        for j, i in enumerate(rows):
            ahead = drafts[i] if drafts is not None else ()
            tokens = output_token_ids[i]
            grammars[i].fill_bitmask(tokens[:len(tokens) - len(ahead)] if ahead else tokens, bitmask[j], ahead)
        return cls(device_column(rows, torch.int64, device), _to_device(torch.from_numpy(bitmask), device),
                   len(rows) == len(grammars))


@dataclass
class SamplingMetadata:
    temperature: torch.Tensor | None
    random_rows: Rows | None
    top_k: torch.Tensor | None
    top_p: torch.Tensor | None
    min_p: torch.Tensor | None
    truncating: list[bool] | None
    max_top_k: int
    generators: dict[int, torch.Generator]
    logit_bias: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None
    banned: tuple[torch.Tensor, torch.Tensor] | None
    penalties: Penalties | None
    max_num_logprobs: int | None
    allowed_tokens: AllowedTokens | None = None
    grammar_mask: GrammarMask | None = None

    @property
    def all_greedy(self) -> bool:
        return self.temperature is None

    @property
    def argmax_only(self) -> bool:
        """Every row is a plain argmax of the logits as the model gave them: greedy, no bias, no
        banned tokens, no allowed_token_ids, no grammar, no penalties, no logprobs."""
        return (self.temperature is None and self.logit_bias is None and self.banned is None
                and self.allowed_tokens is None and self.grammar_mask is None and self.penalties is None
                and self.max_num_logprobs is None)

    @classmethod
    def from_requests(
        cls,
        params: Sequence[SamplingParams],
        output_token_ids: Sequence[Sequence[int]],
        prompt_token_ids: Sequence[Sequence[int]],
        generators: Sequence[torch.Generator | None],
        *,
        vocab_size: int,
        eos_token_ids: Collection[int] = (),
        grammars: Sequence[GrammarMatcher | None] | None = None,
        bad_words: Sequence[Sequence[Sequence[int]]] | None = None,
        drafts: Sequence[Sequence[int]] | None = None,
        device="cpu",
    ) -> SamplingMetadata:
        """Build one step's metadata; the four sequences are per row and of equal length, and so are
        `grammars` (each row's structured-output matcher, or None), `bad_words` (each row's bad
        words' token sequences, bad_words.py) and `drafts` (speculative decoding: the draft tokens
        that end each row's output_token_ids, which a grammar reads without keeping), when given."""
        num_rows = len(params)
        if not (len(output_token_ids) == len(prompt_token_ids) == len(generators) == num_rows):
            raise ValueError(
                f"one entry per row expected: {num_rows} params, {len(output_token_ids)} output_token_ids, "
                f"{len(prompt_token_ids)} prompt_token_ids, {len(generators)} generators"
            )

        def column(values, dtype):
            return device_column(values, dtype, device)

        greedy = [p.greedy for p in params]
        temperature = random_rows = top_k = top_p = min_p = truncating = None
        max_top_k = 0
        if not all(greedy):
            temperature = column([1.0 if g else p.temperature for p, g in zip(params, greedy)], torch.float32)
            if any(greedy):
                random_rows = Rows.of([i for i, g in enumerate(greedy) if not g], device)
            # Each row's cuts (top_k vocab_size, top_p 1, min_p 0: off), stated once for the device
            # columns and the host's `truncating`.
            ks = [p.top_k if 0 < p.top_k < vocab_size else vocab_size for p in params]
            cuts = [(k < vocab_size, p.top_p < 1.0, p.min_p > 0.0) for k, p in zip(ks, params)]
            cut_k, cut_p, cut_min_p = (any(column_cuts) for column_cuts in zip(*cuts))
            if cut_k:
                top_k = column(ks, torch.int64)
                max_top_k = max(k for k, g in zip(ks, greedy) if not g)
            if cut_p:
                top_p = column([p.top_p for p in params], torch.float32)
            if cut_min_p:
                min_p = column([p.min_p for p in params], torch.float32)
            if cut_k or cut_p or cut_min_p:
                truncating = [any(row_cuts) for row_cuts in cuts]

        logit_bias = None
        bias_rows = [i for i, p in enumerate(params) if p.logit_bias]
        if bias_rows:
            items = [(i, t, b) for i in bias_rows for t, b in params[i].logit_bias.items()]
            rows, ids, biases = zip(*items)
            logit_bias = (column(rows, torch.int64), column(ids, torch.int64), column(biases, torch.float32))

        banned_rows, banned_ids = [], []
        # A structured output ends where its grammar does: min_tokens does not apply to it.
        for i, p in enumerate(params):
            if len(output_token_ids[i]) < p.min_tokens and p.structured_outputs is None:
                banned_rows.append(i)
                banned_ids.append(sorted(p.all_stop_token_ids(eos_token_ids)))
        for i, sequences in enumerate(bad_words or ()):
            if sequences:
                banned_rows.append(i)
                banned_ids.append(banned_next(sequences, output_token_ids[i]))
        banned = _flat_index(banned_rows, banned_ids, device) if any(banned_ids) else None

        logprobs = [p.logprobs for p in params if p.logprobs is not None]
        return cls(
            temperature=temperature,
            random_rows=random_rows,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            truncating=truncating,
            max_top_k=max_top_k,
            generators={i: g for i, g in enumerate(generators) if g is not None and not greedy[i]},
            logit_bias=logit_bias,
            banned=banned,
            penalties=Penalties.build(params, output_token_ids, prompt_token_ids, device),
            max_num_logprobs=max(logprobs) if logprobs else None,
            allowed_tokens=AllowedTokens.build(params, device),
            grammar_mask=GrammarMask.build(grammars, output_token_ids, device, drafts) if grammars else None,
        )
