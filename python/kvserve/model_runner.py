"""ModelRunner: one scheduled step in, sampled token ids out.

It is the only place where the scheduler's arrays become tensors (zero-copy views), and it runs
the forward pass, computes logits only for the rows it samples (and for prompt rows whose
logprobs were asked for), and samples. `launch` queues the forward pass and the logits, and
returns at once where the device runs them asynchronously (a GPU); `LaunchedStep.sample()` builds
the sampling metadata from the requests as they are then (the tokens of the step before included)
and queues the sampler, and the copies of its results to the host (HostResult), without waiting
for the device, so the engine calls it once its own host work is done; `LaunchedStep.result()`
waits for those copies, not for work queued after them (and settles what the sampler left to the
tokens' reading: top-p rows whose first candidates fell short).

A step scheduled ahead (scheduler.h) decodes tokens the step before it is still sampling: `launch`
takes that step and writes its sampled ids, on the device, into the rows the scheduler deferred,
as the sampler left them: a row the sampler rechecks may change when the step's result is read
(StepResult.resampled_rows), and the engine then retracts the row that decoded the old token,
unless it had the step settle first (`LaunchedStep.settle()`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from kvserve import ops
from kvserve.logprobs import LogprobsTensors, prompt_logprobs
from kvserve.lora.batch import LoRABatch
from kvserve.models import AttentionMetadata
from kvserve.request_state import RequestState, SequenceState
from kvserve.sampler import Sampler, SamplerOutput
from kvserve.sampling_metadata import SamplingMetadata


def sampled_rows(hidden: torch.Tensor, logits_indices: np.ndarray) -> torch.Tensor:
    """The rows of hidden [num_tokens, hidden] to sample. A decode step samples every row in order:
    then a view. Otherwise the indices go to a GPU without waiting: a blocking copy would make the
    host wait for the forward pass before it queues the logits (a non-blocking one from pageable
    memory is staged before it returns, so the scheduler may reuse the array)."""
    if len(logits_indices) == hidden.shape[0] and np.array_equal(logits_indices, np.arange(len(logits_indices))):
        return hidden
    return hidden[torch.from_numpy(logits_indices).to(hidden.device, non_blocking=True)]


def fill_deferred_inputs(input_ids: torch.Tensor, out, previous: LaunchedStep) -> None:
    """Write into `input_ids` (the step's, on the model's device) the ids that step `previous`
    samples for the tokens `out` deferred, as its sampler leaves them, without waiting for the
    device."""
    sampled = previous.sampled_ids()
    tokens = torch.from_numpy(out.deferred_input_tokens).to(input_ids.device, non_blocking=True)
    sources = torch.from_numpy(out.deferred_input_sources).to(sampled.device, non_blocking=True)
    input_ids[tokens] = sampled[sources].to(input_ids.dtype)


@dataclass
class StepResult:
    sampled_token_ids: np.ndarray  # int32 [num_sampled], aligned with the step's logits_indices
    logprobs: LogprobsTensors | None  # rows aligned with sampled_token_ids
    # request id -> (first prompt position covered, logprobs of the prompt tokens that follow)
    prompt_logprobs: dict[str, tuple[int, LogprobsTensors]]
    resampled_rows: list[int]  # rows whose token settling changed after the next step could read it
    num_resampled: int  # rows whose token settling changed, before the next step read them or after


def draft_prefixes(out) -> list[list[int]] | None:
    """Speculative decoding: for each sampled entry, the draft tokens its row computed before the
    entry's token (SchedulerOutput.sampled_draft_offsets), which its sample follows as if they were
    the sequence's; None when no row of the step has drafts."""
    offsets = out.sampled_draft_offsets
    if not offsets.any():
        return None
    input_ids, indices = out.input_ids, out.logits_indices
    return [input_ids[i - j + 1:i + 1].tolist() if j else [] for i, j in zip(indices.tolist(), offsets.tolist())]


def _reads_outputs(state: RequestState, sequence: SequenceState) -> bool:
    """Whether a row's sampling reads its output tokens (SamplingMetadata.from_requests): penalties,
    min_tokens, bad words or a grammar."""
    p = state.params
    return bool(p.penalized or p.min_tokens or state.bad_words or sequence.grammar is not None)


@dataclass
class SampleInputs:
    """What the sampler of a launched step takes: its logits, and the sampled rows' requests and
    sequences (kept by reference: their token ids are read when the step samples), and the drafts
    each row's token follows (draft_prefixes)."""

    sampler: Sampler
    logits: torch.Tensor
    states: list[RequestState]
    sequences: list[SequenceState]
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    drafts: list[list[int]] | None = None

    def metadata(self, void: Collection[SequenceState] = ()) -> SamplingMetadata:
        """`void`: sequences whose rows are retracted (their tokens dropped): they draw nothing from
        their generators, so that a seeded sequence's draws are those of the steps it keeps."""
        states, sequences = self.states, self.sequences
        outputs = [q.token_ids for q in sequences]
        if self.drafts is not None:
            # Drafts join the output tokens only where the sampler reads them (a copy of each row's
            # tokens, many of them in long outputs).
            outputs = [tokens + drafts if drafts and _reads_outputs(state, sequence) else tokens
                       for tokens, drafts, state, sequence in zip(outputs, self.drafts, states, sequences)]
        return SamplingMetadata.from_requests(
            [s.params for s in states], outputs, [s.prompt_token_array for s in states],
            [None if q in void else q.generator for q in sequences], vocab_size=self.vocab_size,
            eos_token_ids=self.eos_token_ids, grammars=[q.grammar for q in sequences],
            bad_words=[s.bad_words for s in states], drafts=self.drafts, device=self.logits.device)


def _to_host_async(tensor: torch.Tensor) -> torch.Tensor:
    """A GPU tensor's copy in pinned host memory, queued without waiting; a host tensor itself."""
    if not tensor.is_cuda:
        return tensor
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    return host.copy_(tensor, non_blocking=True)


@dataclass
class HostResult:
    """A step's results, copied to the host as soon as its sampler is queued. On a GPU every step
    runs on one stream, and a plain read (.cpu()) waits for everything queued before it: a step
    launched ahead of these tokens, all of its forward pass. Waiting for `done` waits for this
    step's work only."""

    sampled_token_ids: torch.Tensor
    logprobs: LogprobsTensors | None
    prompt_logprobs: dict[str, tuple[int, LogprobsTensors]]
    sufficient: list[torch.Tensor]  # each recheck's flags: whether the row's first candidates held
    done: torch.cuda.Event | None  # None: nothing was copied (a CPU step)

    @classmethod
    def queue(cls, sampled: SamplerOutput, prompt_logprobs: dict[str, tuple[int, LogprobsTensors]]) -> HostResult:
        copies = cls(_to_host_async(sampled.sampled_token_ids),
                     sampled.logprobs.map(_to_host_async) if sampled.logprobs is not None else None,
                     {r: (first, tensors.map(_to_host_async)) for r, (first, tensors) in prompt_logprobs.items()},
                     [_to_host_async(check.sufficient) for check in sampled.rechecks], None)
        if sampled.sampled_token_ids.is_cuda or any(t.token_ids.is_cuda for _, t in prompt_logprobs.values()):
            copies.done = torch.cuda.Event()
            copies.done.record()
        return copies

    def wait(self) -> None:
        if self.done is not None:
            self.done.synchronize()


@dataclass
class LaunchedStep:
    """A step's work, queued: its results may still be computing on the device."""

    prompt_logprobs: dict[str, tuple[int, LogprobsTensors]]
    sample_inputs: SampleInputs | None  # None: no row to sample
    sampled: SamplerOutput | None = None
    error: Exception | None = None  # of the sampler, raised by result()
    num_settled_early: int = 0  # rows settle() changed before the next step read them
    host: HostResult | None = None  # queued with the sampler

    @torch.inference_mode()
    def sample(self, void: Collection[SequenceState] = ()) -> None:
        """Build the sampling metadata and queue the sampler (once); `void`: SampleInputs.metadata."""
        if self.sampled is not None or self.error is not None:
            return
        if self.sample_inputs is None:
            self.sampled = SamplerOutput(torch.empty(0, dtype=torch.int32), None)
            self.host = HostResult.queue(self.sampled, self.prompt_logprobs)
            return
        inputs, self.sample_inputs = self.sample_inputs, None
        try:
            self.sampled = inputs.sampler(inputs.logits, inputs.metadata(void), settle=False)
            self.host = HostResult.queue(self.sampled, self.prompt_logprobs)
        except Exception as error:
            self.error = error

    @torch.inference_mode()
    def settle(self) -> None:
        """Settle now what the sampler left to a recheck (waiting for the device where it left
        any), so that the next step reads settled tokens."""
        self.sample()
        if self.error is not None:
            raise self.error
        changed = self.sampled.settle()
        if changed:
            self.num_settled_early += len(changed)
            self.host = HostResult.queue(self.sampled, self.prompt_logprobs)  # the settled tokens

    def sampled_ids(self) -> torch.Tensor:
        """The sampled token ids on the device, as the next step's deferred inputs take them: as
        the sampler left them, without waiting for it (module docstring)."""
        self.sample()
        if self.error is not None:
            raise self.error
        return self.sampled.sampled_token_ids

    @torch.inference_mode()
    def result(self) -> StepResult:
        """The results on the host; waits for this step's work on the device (HostResult), and
        for everything queued since only where a row's first candidates fell short."""
        self.sample()
        if self.error is not None:
            raise self.error
        host = self.host
        host.wait()
        resampled = []
        if all(bool(flags.all()) for flags in host.sufficient):
            self.sampled.rechecks.clear()  # nothing to settle
        else:
            resampled = self.sampled.settle()
            host = self.host = HostResult.queue(self.sampled, host.prompt_logprobs)  # the settled tokens
            host.wait()  # for everything queued before the redo, too
        return StepResult(host.sampled_token_ids.numpy(), host.logprobs, host.prompt_logprobs, resampled,
                          len(resampled) + self.num_settled_early)


class ModelRunner:
    # Whether launch() returns before the device has finished the step (the engine then overlaps
    # the host's work with it). The CPU computes a step inside launch().
    asynchronous = False

    def __init__(self, model: nn.Module, kv_caches: list[tuple[torch.Tensor, torch.Tensor]], vocab_size: int,
                 eos_token_ids: Sequence[int], device: torch.device):
        self.model = model
        self.kv_caches = kv_caches
        self.vocab_size = vocab_size
        self.eos_token_ids = tuple(eos_token_ids)
        self.device = device
        self.sampler = Sampler()

    @torch.inference_mode()
    def launch(self, out, requests: Mapping[str, RequestState], previous: LaunchedStep | None = None) -> LaunchedStep:
        """Queue one SchedulerOutput `out`; `requests` maps request ids to their state; `previous`
        is the step launched before it, whose sampled ids its deferred inputs take. The step's
        arrays are read before this returns (they are valid until the next schedule())."""
        if out.num_deferred and previous is None:
            raise ValueError(f"the step defers {out.num_deferred} input ids to the step before it, but none was given")
        if out.blocks_to_copy.shape[0]:
            for key_cache, value_cache in self.kv_caches:
                ops.copy_blocks(key_cache, out.blocks_to_copy)
                ops.copy_blocks(value_cache, out.blocks_to_copy)
        hidden = self.forward(out, previous, LoRABatch.of_step(out, requests, self.device))
        if not self.model.has_lm_head:
            return self._pool(out, requests, hidden)

        prompt_lp = self._prompt_logprobs(out, requests, hidden)
        if out.num_sampled == 0:
            return LaunchedStep(prompt_lp, None)
        logits = self.model.compute_logits(sampled_rows(hidden, out.logits_indices))
        states = [requests[r] for r in out.sampled_req_ids]
        sequences = [state.sequences[i] for state, i in zip(states, out.sampled_sample_indices.tolist())]
        return LaunchedStep(prompt_lp, SampleInputs(self.sampler, logits, states, sequences, self.vocab_size,
                                                    self.eos_token_ids, draft_prefixes(out)))

    def forward(self, out, previous: LaunchedStep | None, lora: LoRABatch | None) -> torch.Tensor:
        """The model's final hidden states [num_tokens, hidden] for the step's tokens; `lora`: its
        rows' LoRA adapters."""
        metadata = AttentionMetadata(
            slot_mapping=torch.from_numpy(out.slot_mapping),
            block_table=torch.from_numpy(out.block_table),
            seq_lens=torch.from_numpy(out.seq_lens),
            query_start_loc=torch.from_numpy(out.query_start_loc),
        )
        input_ids = torch.from_numpy(out.input_ids)
        if out.num_deferred:
            input_ids = input_ids.clone()  # the scheduler's buffer is read-only
            fill_deferred_inputs(input_ids, out, previous)
        return self.model(input_ids, torch.from_numpy(out.positions), self.kv_caches, metadata, lora)

    @staticmethod
    def _pool(out, requests: Mapping[str, RequestState], hidden: torch.Tensor) -> LaunchedStep:
        """A pooling engine's step (kvserve.pooling): every row's hidden states go to its request's
        pool; a request whose last prompt token this step computed takes a placeholder token (0),
        which ends it."""
        qsl, positions = out.query_start_loc, out.positions
        for row, request_id in enumerate(out.req_ids):
            start, end = int(qsl[row]), int(qsl[row + 1])
            requests[request_id].pooled.add(hidden[start:end], int(positions[start]))
        placeholders = SamplerOutput(torch.zeros(out.num_sampled, dtype=torch.int32), None)
        return LaunchedStep({}, None, placeholders, host=HostResult.queue(placeholders, {}))

    def _prompt_logprobs(self, out, requests, hidden) -> dict[str, tuple[int, LogprobsTensors]]:
        """Logprobs of the prompt tokens that this step's rows predict, for requests that ask."""
        result = {}
        qsl = None
        for row, request_id in enumerate(out.req_ids):
            state = requests[request_id]
            if state.prompt_logprobs is None:
                continue
            qsl = out.query_start_loc if qsl is None else qsl
            start, end = int(qsl[row]), int(qsl[row + 1])
            first = int(out.positions[start])
            # Position p predicts prompt token p + 1; the last prompt position predicts an output token.
            last = min(first + (end - start), len(state.prompt_token_ids) - 1)
            if last <= first:
                continue
            # To the device without waiting for the forward pass (a pageable copy is staged at once).
            next_ids = torch.tensor(state.prompt_token_ids[first + 1:last + 1], dtype=torch.int64)
            next_ids = next_ids.to(self.device, non_blocking=True)
            logits = self.model.compute_logits(hidden[start:start + last - first])
            result[request_id] = (first, prompt_logprobs(logits, next_ids, state.params.prompt_logprobs))
        return result
