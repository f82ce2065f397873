"""POST /pooling (vLLM's): what a pooling server's model gives for each input, for one of vLLM's
pooling tasks (kvserve.pooling): an embedding model's vector (embed) or every prompt token's
(token_embed, the default), a classifier's class probabilities (classify) or every token's
(token_classify, the default; a reward model's per-token scores, use_activation false: logits).
The input is as an embedding request's (prompts, or a conversation in `messages`); data comes back
as floats (nested, a row per token, for the token tasks) or base64 of the float32 bytes, row after row.

    {"id", "object": "list", "created", "model",
     "data": [{"index": i, "object": "pooling", "data": [...]}],
     "usage": {"prompt_tokens": n, "total_tokens": n, "completion_tokens": 0}}
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from kvserve.pooling import PoolingParams
from kvserve.server.async_engine import AsyncEngine
from kvserve.server.embeddings import check_pooling_request, encoded, request_prompts, run_pooled
from kvserve.server.errors import bad_request
from kvserve.server.protocol import PoolingRequest
from kvserve.server.served_model import ServedModel

router = APIRouter()


@router.post("/pooling")
async def create_pooling(body: PoolingRequest, raw_request: Request):
    served: ServedModel = raw_request.app.state.model
    engine: AsyncEngine = raw_request.app.state.engine
    lora = check_pooling_request(raw_request, body.model, body.priority)
    classifier = served.classifier
    task = body.task or ("token_classify" if classifier is not None else "token_embed")
    try:
        engine.engine.check_pooling_task(task)
    except ValueError as e:
        raise bad_request(str(e), "task") from None
    prompts = await request_prompts(served, body)
    # normalize is an embedding's (a classifier's head reads the state as it is; use_activation is its).
    params = PoolingParams(dimensions=body.dimensions, normalize=body.normalize if classifier is None else None,
                           truncate_prompt_tokens=body.truncate_prompt_tokens, use_activation=body.use_activation,
                           task=task)
    request_id, prompts, outputs = await run_pooled(raw_request, prompts, params, param="input",
                                                    priority=body.priority, prefix="pool", lora=lora)
    if outputs is None:
        return Response(status_code=499)  # nobody will read it: the client is gone

    def data(output):
        values = output.outputs.data
        if classifier is not None:
            values = classifier.classes(values, body.use_activation)
        return encoded(values, body.encoding_format)

    items = await asyncio.to_thread(lambda: [{"index": i, "object": "pooling", "data": data(o)}
                                             for i, o in enumerate(outputs)])
    num_tokens = sum(len(p.token_ids) for p in prompts)
    return JSONResponse({"id": request_id, "object": "list", "created": int(time.time()),
                         "model": served.response_name(lora), "data": items,
                         "usage": {"prompt_tokens": num_tokens, "total_tokens": num_tokens, "completion_tokens": 0}})
