"""The small endpoints: GET /v1/models, /health, /version; POST /tokenize, /detokenize (vLLM's)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import Response

import kvserve
from kvserve.server.async_engine import AsyncEngine
from kvserve.server.errors import OpenAIError, bad_request
from kvserve.server.protocol import DetokenizeRequest, TokenizeRequest
from kvserve.server.served_model import ServedModel

router = APIRouter()


@router.get("/v1/models")
async def list_models(raw_request: Request) -> dict:
    served: ServedModel = raw_request.app.state.model
    cards = [{"id": name, "object": "model", "created": served.created, "owned_by": "kvserve", "root": served.root,
              "max_model_len": served.max_model_len} for name in served.names]
    # As vLLM lists them: each adapter under its name, its parent the model.
    cards += [{"id": name, "object": "model", "created": served.created, "owned_by": "kvserve",
               "root": lora.lora_path, "parent": served.name, "max_model_len": served.max_model_len}
              for name, lora in served.loras.items()]
    return {"object": "list", "data": cards}


@router.get("/health")
async def health(raw_request: Request) -> Response:
    engine: AsyncEngine = raw_request.app.state.engine
    if not engine.is_running:
        raise OpenAIError(503, "the engine is not running")
    return Response(status_code=200)


@router.get("/version")
async def version() -> dict:
    return {"version": kvserve.__version__}


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, raw_request: Request) -> dict:
    served: ServedModel = raw_request.app.state.model
    served.check_name(body.model)
    if (body.prompt is None) == (body.messages is None):
        raise bad_request("give either prompt or messages (one of them)", "prompt")
    if body.prompt is not None:
        text, add_special = body.prompt, body.add_special_tokens if body.add_special_tokens is not None else True
    else:
        text, add_special = await asyncio.to_thread(served.render_chat, body), bool(body.add_special_tokens)
    tokens = await asyncio.to_thread(served.tokenizer.encode, text, add_special_tokens=add_special)
    return {"count": len(tokens), "max_model_len": served.max_model_len, "tokens": tokens}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, raw_request: Request) -> dict:
    served: ServedModel = raw_request.app.state.model
    served.check_name(body.model)
    served.check_token_ids(body.tokens, "tokens")
    return {"prompt": await asyncio.to_thread(served.tokenizer.decode, body.tokens)}
