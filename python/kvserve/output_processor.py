"""Applies one step's results to the requests' Python-side state and says what to report.

The scheduler has already appended the sampled tokens and applied stop tokens and lengths; here the
sequences' token ids and text grow (stop strings end a sequence early, through the scheduler),
logprobs are recorded, and each request touched yields a RequestOutput as its output_kind asks. On
a GPU this runs while the next step computes, before that step samples (its sampler reads the
token ids for penalties).
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field

from kvserve.model_runner import StepResult
from kvserve.outputs import RequestOutput
from kvserve.request_state import RequestState


@dataclass
class AppliedStep:
    """A step whose tokens the scheduler has taken."""

    updates: list  # scheduler.update_from_output's SampleUpdates
    result: StepResult
    time: float  # when its tokens were known
    retracted: list = field(default_factory=list)  # SequenceStates whose row in the next step is void


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

    logprob_dicts = None
    if result.logprobs is not None:
        # One dict per row of the step's sampled tokens (update.sampled_index), as many top
        # entries as each request asks (rows of requests ended since keep their chosen token only).
        num = [0] * result.logprobs.token_ids.shape[0]
        for update in step.updates:
            state = requests.get(update.request_id)
            if state is not None and state.params.logprobs is not None:
                num[update.sampled_index] = state.params.logprobs
        logprob_dicts = result.logprobs.to_dicts(num, decode)

    touched: dict[str, RequestState] = {}
    for update in step.updates:
        request_id, index, new_token_ids, reason = update
        state = requests.get(request_id)
        if state is None:
            continue
        sequence = state.sequences[index]
        if sequence.finish_reason is not None:
            continue  # a stop string ended it at a token before, of a row that kept several (its drafts')
        sequence.token_ids.extend(new_token_ids)
        if state.metrics.first_token_time is None:
            state.metrics.first_token_time = step.time
        state.metrics.last_token_time = step.time
        if sequence.logprobs is not None and logprob_dicts is not None:
            entry = logprob_dicts[update.sampled_index]
            sequence.logprobs.append(entry)
            sequence.cumulative_logprob += entry[new_token_ids[-1]].logprob

        stop_string = None
        if sequence.detokenizer is not None:
            stop_terminated = reason == "stop" and update.stop_token_id is not None
            stop_string = sequence.detokenizer.update(new_token_ids, stop_terminated)
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
