"""vLLM's --enable-log-requests: a log line for each prompt a request submits, with what it asks for,

    Received request cmpl-<id>-0: prompt: 'The capital of', params: SamplingParams(...),
    prompt_token_ids: [791, 6864, 315], lora_request: None

the prompt's text and token ids cut to --max-log-len characters and ids (as vLLM's)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from kvserve.lora import LoRARequest
from kvserve.server.async_engine import EnginePrompt

logger = logging.getLogger("kvserve.server")


class RequestLog:
    def __init__(self, max_len: int | None = None):
        if max_len is not None and max_len < 0:
            raise ValueError(f"max_log_len must be >= 0, got {max_len}")
        self.max_len = max_len

    def received(self, request_id: str, prompts: Sequence[EnginePrompt], params, lora: LoRARequest | None) -> None:
        """`params`: the SamplingParams (for beam search, BeamSearchParams; a pooling request's
        PoolingParams) the prompts run with."""
        for i, prompt in enumerate(prompts):
            text, token_ids = prompt.text, prompt.token_ids
            if self.max_len is not None:
                text, token_ids = (text[:self.max_len] if text is not None else None), token_ids[:self.max_len]
            logger.info("Received request %s-%d: prompt: %r, params: %s, prompt_token_ids: %s, lora_request: %s",
                        request_id, i, text, params, token_ids, lora)


def log_request(raw_request, request_id: str, prompts: Sequence[EnginePrompt], params, lora: LoRARequest | None) -> None:
    """RequestLog.received, where the server logs requests (--enable-log-requests)."""
    request_log: RequestLog | None = raw_request.app.state.request_log
    if request_log is not None:
        request_log.received(request_id, prompts, params, lora)
