"""Applies one step's results to the requests' Python-side state and says what to report.

The scheduler has already appended the sampled tokens and applied stop tokens and lengths; here the
text grows (stop strings end a sequence early, through the scheduler), logprobs are recorded, and
each request touched this step yields a RequestOutput as its output_kind asks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, MutableMapping

from kvserve.model_runner import StepResult
from kvserve.outputs import RequestOutput
from kvserve.request_state import RequestState


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


def process_step(out, result: StepResult, updates, requests: MutableMapping[str, RequestState], scheduler,
                 decode: Callable[[int], str] | None) -> list[RequestOutput]:
    """`out`: the step's SchedulerOutput; `updates`: what scheduler.update_from_output returned.
    Finished requests are removed from `requests`. Returns the outputs to report, in update order."""
    now = time.time()
    for request_id, (first, tensors) in result.prompt_logprobs.items():
        _record_prompt_logprobs(requests[request_id], first, tensors, decode)

    logprob_rows = None
    if result.logprobs is not None:
        logprob_rows = {key: row for row, key in
                        enumerate(zip(out.sampled_req_ids, out.sampled_sample_indices.tolist()))}
        logprob_dicts = None

    touched: dict[str, RequestState] = {}
    for update in updates:
        request_id, index, new_token_ids, reason = update
        state = requests[request_id]
        sequence = state.sequences[index]
        sequence.token_ids.extend(new_token_ids)
        if state.metrics.first_token_time is None:
            state.metrics.first_token_time = now
        state.metrics.last_token_time = now

        if sequence.logprobs is not None and logprob_rows is not None:
            if logprob_dicts is None:
                num = [requests[r].params.logprobs or 0 for r in out.sampled_req_ids]
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
            state.metrics.finished_time = now
            del requests[request_id]
        output = state.to_output()
        if output is not None:
            outputs.append(output)
    return outputs
