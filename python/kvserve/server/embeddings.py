"""POST /v1/embeddings: OpenAI's embeddings, from a server started with `--runner pooling` (or on a
base model's checkpoint: kvserve.pooling). The input is one or more prompts, as a completion's
(text, token ids, or lists of either), or a conversation (`messages`, vLLM's chat embedding request:
rendered with the chat template, no generation prompt unless asked); each prompt becomes one engine
request, pooled once its prompt is computed. Vectors come back as floats, or as base64 of their
float32 little-endian bytes (encoding_format "base64", what the openai client asks for by default).

    {"object": "list", "data": [{"object": "embedding", "index": i, "embedding": [...]}],
     "model": ..., "usage": {"prompt_tokens": n, "total_tokens": n}}
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from kvserve.lora import LoRARequest
from kvserve.outputs import PoolingRequestOutput
from kvserve.pooling import PoolingParams, check_dimensions
from kvserve.server.async_engine import AsyncEngine, EnginePrompt, EngineStoppedError, QueueFullError, RequestStream
from kvserve.server.errors import as_openai_error, bad_request
from kvserve.server.protocol import EmbeddingRequest
from kvserve.server.request_log import log_request
from kvserve.server.responses import unless_disconnected
from kvserve.server.served_model import ServedModel

router = APIRouter()


def encoded(vector, encoding_format: str):
    """A vector (or rows of them) as floats, or as base64 of its float32 little-endian bytes, row after row."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.tolist()


async def _collect(stream: RequestStream, count: int) -> list[PoolingRequestOutput]:
    outputs: list[PoolingRequestOutput | None] = [None] * count
    async for prompt_index, output in stream:
        outputs[prompt_index] = output
    return outputs


def check_pooling_request(raw_request: Request, model: str | None, priority: int) -> LoRARequest | None:
    """The LoRA adapter a pooling endpoint's request names (None: the model); 400 where it cannot run
    here (a generating server, a priority without the priority policy)."""
    served: ServedModel = raw_request.app.state.model
    engine: AsyncEngine = raw_request.app.state.engine
    if not served.pools:
        raise bad_request(f"this server generates: {raw_request.url.path} needs a server started with --runner "
                          "pooling", "model")
    lora = served.check_name(model)
    if priority != 0 and engine.engine.scheduling_policy != "priority":
        raise bad_request(f"priority {priority} needs a server started with --scheduling-policy priority "
                          "(this one runs requests in arrival order)", "priority")
    return lora


async def run_pooled(raw_request: Request, prompts: list[EnginePrompt], params: PoolingParams, *, param: str,
                     priority: int, prefix: str,
                     lora: LoRARequest | None) -> tuple[str, list[EnginePrompt], list[PoolingRequestOutput] | None]:
    """Checks the prompts (`param` names them in errors) and pools them, with `lora`'s adapter:
    (the request's id, the prompts as run, their outputs; None where the client left first)."""
    served: ServedModel = raw_request.app.state.model
    engine: AsyncEngine = raw_request.app.state.engine
    if len(prompts) > engine.max_accepted_seqs:  # more than the server ever takes: no use retrying
        raise bad_request(f"the request holds {len(prompts)} inputs; this server takes at most "
                          f"{engine.max_accepted_seqs} at once (--max-num-seqs running, --max-waiting waiting)", param)
    try:
        check_dimensions(params.dimensions, engine.engine.model_config)
    except ValueError as e:
        raise bad_request(str(e), "dimensions") from None
    prompts = [EnginePrompt(params.truncated_prompt(p.token_ids, served.max_model_len), p.text) for p in prompts]
    for prompt in prompts:
        try:
            engine.engine.check_pooling_prompt(prompt.token_ids)
        except ValueError as e:
            raise bad_request(str(e), param) from None
    request_id = f"{prefix}-{uuid.uuid4().hex}"
    try:
        stream = engine.submit(request_id, prompts, params, lora, priority=priority)
    except (QueueFullError, EngineStoppedError) as e:
        raise as_openai_error(e) from None
    log_request(raw_request, request_id, prompts, params, lora)
    return request_id, prompts, await unless_disconnected(raw_request, stream, _collect(stream, len(prompts)))


async def request_prompts(served: ServedModel, body: EmbeddingRequest) -> list[EnginePrompt]:
    """The prompts of an embedding (or pooling) request: its input's, or its conversation rendered."""
    if (body.input is None) == (body.messages is None):
        raise bad_request("give either input or messages (one of them)", "input")
    if body.input is not None:
        add_special = body.add_special_tokens if body.add_special_tokens is not None else True
        return await asyncio.to_thread(served.prompts, body.input, add_special, "input")
    text = await asyncio.to_thread(served.render_chat, body)
    return [EnginePrompt(await asyncio.to_thread(served.encode, text, bool(body.add_special_tokens), "messages"), text)]


@router.post("/v1/embeddings")
async def create_embeddings(body: EmbeddingRequest, raw_request: Request):
    served: ServedModel = raw_request.app.state.model
    lora = check_pooling_request(raw_request, body.model, body.priority)
    if served.classifier is not None:
        raise bad_request("this model is a classifier: POST /classify for its classes (and /score or /rerank, a "
                          "cross-encoder's), not embeddings", "model")
    prompts = await request_prompts(served, body)
    params = PoolingParams(dimensions=body.dimensions, normalize=body.normalize,
                           truncate_prompt_tokens=body.truncate_prompt_tokens)
    request_id, prompts, outputs = await run_pooled(raw_request, prompts, params, param="input",
                                                    priority=body.priority, prefix="embd", lora=lora)
    if outputs is None:
        return Response(status_code=499)  # nobody will read it: the client is gone
    data = await asyncio.to_thread(lambda: [{"object": "embedding", "index": i,
                                             "embedding": encoded(o.outputs.data, body.encoding_format)}
                                            for i, o in enumerate(outputs)])
    num_tokens = sum(len(p.token_ids) for p in prompts)
    return JSONResponse({"id": request_id, "object": "list", "created": int(time.time()),
                         "model": served.response_name(lora),
                         "data": data, "usage": {"prompt_tokens": num_tokens, "total_tokens": num_tokens}})
