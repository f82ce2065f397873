"""POST /classify (vLLM's): a classifier's class probabilities for each input (kvserve.classify), from
a server on a *ForSequenceClassification checkpoint. The input is one or more prompts, as a
completion's (text, token ids, or lists of either).

    {"id", "object": "list", "created", "model",
     "data": [{"index": i, "label": the likeliest class's, "probs": [...], "num_classes": n}],
     "usage": {"prompt_tokens": n, "total_tokens": n, "completion_tokens": 0}}
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from kvserve.pooling import PoolingParams
from kvserve.server.embeddings import check_pooling_request, run_pooled
from kvserve.server.errors import bad_request
from kvserve.server.protocol import ClassificationRequest
from kvserve.server.served_model import ServedModel

router = APIRouter()


@router.post("/classify")
@router.post("/v1/classify")
async def classify(body: ClassificationRequest, raw_request: Request):
    served: ServedModel = raw_request.app.state.model
    lora = check_pooling_request(raw_request, body.model, body.priority)
    classifier = served.classifier
    if classifier is None:
        raise bad_request("this model has no classification head: /classify needs a *ForSequenceClassification "
                          "checkpoint", "model")
    prompts = await asyncio.to_thread(served.prompts, body.input, True, "input")
    request_id, prompts, outputs = await run_pooled(
        raw_request, prompts, PoolingParams(truncate_prompt_tokens=body.truncate_prompt_tokens), param="input",
        priority=body.priority, prefix="classify", lora=lora)
    if outputs is None:
        return Response(status_code=499)  # nobody will read it: the client is gone
    data = []
    for i, output in enumerate(outputs):
        probs = classifier.probs(output.outputs.data, body.use_activation)
        data.append({"index": i, "label": classifier.labels[max(range(len(probs)), key=probs.__getitem__)],
                     "probs": probs, "num_classes": len(probs)})
    num_tokens = sum(len(p.token_ids) for p in prompts)
    return JSONResponse({"id": request_id, "object": "list", "created": int(time.time()),
                         "model": served.response_name(lora), "data": data,
                         "usage": {"prompt_tokens": num_tokens, "total_tokens": num_tokens, "completion_tokens": 0}})
