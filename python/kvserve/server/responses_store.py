"""The Responses API's stored responses (store, the default, keeps one): each with the conversation
it ended, as input items, so that a request naming it as previous_response_id goes on from there
(OpenAI's instructions are not carried over). Held in memory, the most recent `max_size` of them
(`kvserve serve --max-stored-responses`); 0 keeps none."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

DEFAULT_MAX_STORED_RESPONSES = 1024


@dataclass(frozen=True)
class StoredResponse:
    items: list[dict]  # the conversation as input items: earlier turns, the input, the output
    response: dict  # the response object, as it was returned


class ResponsesStore:
    def __init__(self, max_size: int):
        self.max_size = max_size
        self._responses: OrderedDict[str, StoredResponse] = OrderedDict()

    def put(self, response_id: str, stored: StoredResponse) -> None:
        if self.max_size <= 0:
            return
        self._responses[response_id] = stored
        while len(self._responses) > self.max_size:
            self._responses.popitem(last=False)

    def get(self, response_id: str) -> StoredResponse | None:
        return self._responses.get(response_id)

    def delete(self, response_id: str) -> bool:
        return self._responses.pop(response_id, None) is not None
