"""A request of more samples than a step holds (n > max_num_seqs), run as several: as vLLM runs a
request of n samples as n requests, the engine splits it into children of at most max_num_seqs
samples each, which the scheduler runs as any others (their prompt shared through the prefix
cache), and joins their outputs back into the parent's. Sample i of the parent is sample i of the
outputs whichever child ran it, seeded as it would have been in one request (seed + i). The parent
reports as its output_kind asks: each child's deltas under the parent's id (DELTA), all children's
outputs so far (CUMULATIVE), or every output once the last child finishes (FINAL_ONLY); the prompt's
logprobs and cached tokens are the first child's. A child that ends without finishing (aborted, or
its step failed) ends the parent: the engine aborts the rest.
"""

from __future__ import annotations

import dataclasses

from kvserve.outputs import RequestMetrics, RequestOutput
from kvserve.sampling_params import RequestOutputKind


# The most samples one request may ask for, whatever max_num_seqs: each is a sequence with its own
# state and outputs, which a request of millions would exhaust memory with.
MAX_N = 4096


def split(n: int, max_num_seqs: int) -> list[tuple[int, int]]:
    """(first sample index, samples) of each child."""
    return [(first, min(max_num_seqs, n - first)) for first in range(0, n, max_num_seqs)]


class FannedOutRequest:
    def __init__(self, request_id: str, child_ids: list[str], kind: RequestOutputKind):
        self.request_id = request_id
        self.child_ids = child_ids
        self.kind = kind
        self._latest: dict[str, RequestOutput] = {}  # each child's last output (CUMULATIVE, FINAL_ONLY)
        self._finished: set[str] = set()
        self._cached_tokens: int | None = None  # the first child's

    @property
    def finished(self) -> bool:
        return len(self._finished) == len(self.child_ids)

    def add(self, output: RequestOutput) -> RequestOutput | None:
        """The parent's output for a child's (None: nothing to report yet)."""
        if output.finished:
            self._finished.add(output.request_id)
        first = output.request_id == self.child_ids[0]
        if first:
            self._cached_tokens = output.num_cached_tokens
        if self.kind is RequestOutputKind.DELTA:
            return dataclasses.replace(output, request_id=self.request_id, finished=self.finished,
                                       prompt_logprobs=output.prompt_logprobs if first else None,
                                       num_cached_tokens=self._cached_tokens)
        self._latest[output.request_id] = output
        if self.kind is RequestOutputKind.FINAL_ONLY and not self.finished:
            return None
        children = [self._latest[c] for c in self.child_ids if c in self._latest]
        head = self._latest.get(self.child_ids[0], output)
        return RequestOutput(self.request_id, head.prompt, head.prompt_token_ids, head.prompt_logprobs,
                             sorted((o for child in children for o in child.outputs), key=lambda o: o.index),
                             self.finished, _joined_metrics([c.metrics for c in children]), self._cached_tokens,
                             head.lora_request)


class FanOuts:
    """The engine's fanned-out requests: each by its id, and its children's ids back to it."""

    def __init__(self):
        self._requests: dict[str, FannedOutRequest] = {}
        self._parents: dict[str, str] = {}  # child id -> its request's id

    def add(self, request: FannedOutRequest) -> None:
        self._requests[request.request_id] = request
        self._parents.update((child_id, request.request_id) for child_id in request.child_ids)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._requests

    def ids(self) -> list[str]:
        return list(self._requests)

    def is_child(self, request_id: str) -> bool:
        return request_id in self._parents

    def parents(self, request_ids) -> list[str]:
        """The requests some of `request_ids` are children of."""
        return [self._parents[r] for r in request_ids if r in self._parents]

    def pop_family(self, request_id: str) -> list[str]:
        """Forget the request `request_id` is, or is a child of; its id and its children's (just
        `request_id` where it is neither)."""
        request = self._requests.pop(self._parents.get(request_id, request_id), None)
        if request is None:
            return [request_id]
        for child_id in request.child_ids:
            self._parents.pop(child_id, None)
        return [request.request_id, *request.child_ids]

    def join(self, outputs: list[RequestOutput]) -> list[RequestOutput]:
        """Outputs with the children's joined into their requests' (a finished request forgotten)."""
        if not self._parents:
            return outputs
        joined = []
        for output in outputs:
            request = self._requests.get(self._parents.get(output.request_id))
            if request is None:
                joined.append(output)
                continue
            request_output = request.add(output)
            if request_output is not None:
                joined.append(request_output)
            if request.finished:
                self.pop_family(request.request_id)
        return joined


def _joined_metrics(metrics: list[RequestMetrics | None]) -> RequestMetrics | None:
    """The children's milestones as one request's: the earliest start and first token, the latest
    last token and finish."""
    known = [m for m in metrics if m is not None]
    if not known:
        return None

    def pick(name: str, choose):
        values = [getattr(m, name) for m in known if getattr(m, name) is not None]
        return choose(values) if values else None

    return RequestMetrics(min(m.arrival_time for m in known), pick("first_scheduled_time", min),
                          pick("first_token_time", min), pick("last_token_time", max), pick("finished_time", max))
