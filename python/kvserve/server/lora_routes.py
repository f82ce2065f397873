"""vLLM's runtime LoRA routes, where the server allows them (`--allow-runtime-lora-updating`, or
KVSERVE_ALLOW_RUNTIME_LORA_UPDATING=1, as vLLM's VLLM_ALLOW_RUNTIME_LORA_UPDATING):

    POST /v1/load_lora_adapter    {"lora_name": ..., "lora_path": ...}   serve another adapter
    POST /v1/unload_lora_adapter  {"lora_name": ...}                     stop serving one

Paths are read on the server, so these routes are for whoever runs it (behind --api-key where
others can reach it)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from kvserve.server.errors import OpenAIError, bad_request
from kvserve.server.protocol import LoadLoRARequest, UnloadLoRARequest
from kvserve.server.served_model import ServedModel

router = APIRouter()


@router.post("/v1/load_lora_adapter")
async def load_lora_adapter(body: LoadLoRARequest, raw_request: Request) -> PlainTextResponse:
    served: ServedModel = raw_request.app.state.model
    async with served.lora_updates:
        if served.name_in_use(body.lora_name):
            raise bad_request(f"the name '{body.lora_name}' is in use: unload it first", "lora_name")
        try:
            await asyncio.to_thread(served.add_lora, body.lora_name, body.lora_path)
        except ValueError as e:
            raise bad_request(str(e), "lora_path") from None
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


@router.post("/v1/unload_lora_adapter")
async def unload_lora_adapter(body: UnloadLoRARequest, raw_request: Request) -> PlainTextResponse:
    served: ServedModel = raw_request.app.state.model
    async with served.lora_updates:
        if body.lora_name not in served.loras:
            raise OpenAIError(404, f"The LoRA adapter '{body.lora_name}' is not served", param="lora_name",
                              code="model_not_found")
        raw_request.app.state.engine.drop_lora(served.remove_lora(body.lora_name).lora_int_id)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
