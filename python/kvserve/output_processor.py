"""Applies one step's results to the requests' Python-side state and says what to report, in two
parts:

- `apply_tokens`, right after the scheduler has appended the sampled tokens and applied stop tokens
  and lengths: the sequences' token ids grow (the next step's sampler reads them for penalties).
- `process_step`, which may run while the GPU computes the next step: the text grows (stop strings
  end a sequence early, through the scheduler), logprobs are recorded, and each request touched
  yields a RequestOutput as its output_kind asks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass

from kvserve.model_runner import StepResult
from kvserve.outputs import RequestOutput
from kvserve.request_state import RequestState


@dataclass
class AppliedStep:
    """What process_step needs of a step once the scheduler has taken its tokens (the step's
    SchedulerOutput is not valid by then)."""

    updates: list  # scheduler.update_from_output's SampleUpdates
    result: StepResult
    sampled_keys: list[tuple[str, int]] | None  # (request id, sample index) per logprobs row
    time: float


def apply_tokens(out, result: StepResult, updates, requests: Mapping[str, RequestState]) -> AppliedStep:
    """`out`: the step's SchedulerOutput; `updates`: what scheduler.update_from_output returned."""
    now = time.time()
    for request_id, index, new_token_ids, _ in updates:
        state = requests[request_id]
        state.sequences[index].token_ids.extend(new_token_ids)
        if state.metrics.first_token_time is None:
            state.metrics.first_token_time = now
        state.metrics.last_token_time = now
    sampled_keys = None
    if result.logprobs is not None:
        sampled_keys = list(zip(out.sampled_req_ids, out.sampled_sample_indices.tolist()))
    return AppliedStep(updates, result, sampled_keys, now)


def _record_prompt_logprobs(state: RequestState, first: int, tensors, decode) -> None:
    # tensors cover prompt tokens first+1 .. first+k; positions recomputed after a preemption are
    # skipped, so each prompt token gets exactly one entry.
    known = len(state.prompt_logprobs)  # entries for prompt tokens 0 .. known-1
    skip = known - (first + 1)
    if skip < 0 or skip >= tensors.token_ids.shape[0]:
        return
    rows = tensors.token_ids.shape[0] - skip
    sliced = type(tensors)(tensors.token_ids[skip:], tensors.logprobs[skip:], tensors.ranks[skip:])
    state.prompt_logprobs.extend(sliced.to_dicts([state.params.prompt_logprobs] * rows, decode))


def process_step(step: AppliedStep, requests: MutableMapping[str, RequestState], scheduler,
                 decode: Callable[[int], str] | None) -> list[RequestOutput]:
    """Finished requests are removed from `requests`; requests no longer in it (the step after
    this one failed and ended them) are skipped. Returns the outputs to report, in update order."""
    result = step.result
    for request_id, (first, tensors) in result.prompt_logprobs.items():
        if request_id in requests:
            _record_prompt_logprobs(requests[request_id], first, tensors, decode)

    logprob_dicts = logprob_rows = None
    if step.sampled_keys is not None:
        logprob_rows = {key: row for row, key in enumerate(step.sampled_keys)}

    touched: dict[str, RequestState] = {}
    for update in step.updates:
        request_id, index, new_token_ids, reason = update
        state = requests.get(request_id)
        if state is None:
            continue
        sequence = state.sequences[index]
        if sequence.logprobs is not None and logprob_rows is not None:
            if logprob_dicts is None:
                num = [(requests[r].params.logprobs or 0) if r in requests else 0 for r, _ in step.sampled_keys]
                logprob_dicts = result.logprobs.to_dicts(num, decode)
            entry = logprob_dicts[logprob_rows[(request_id, index)]]
            sequence.logprobs.append(entry)
            sequence.cumulative_logprob += entry[new_token_ids[-1]].logprob

        stop_string = sequence.detokenizer.update(new_token_ids) if sequence.detokenizer is not None else None
        if stop_string is not None:
            if reason is None:
                scheduler.finish_sample(request_id, index, "stop")
            sequence.finish_reason, sequence.stop_reason = "stop", stop_string
        elif reason is not None:
            sequence.finish(reason, update.stop_token_id, state.params)
        touched[request_id] = state

    outputs = []
    for request_id, state in touched.items():
        if state.finished:
            state.metrics.finished_time = step.time
            del requests[request_id]
        output = state.to_output()
        if output is not None:
            outputs.append(output)
    return outputs
