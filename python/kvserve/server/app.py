"""build_app: the FastAPI app that serves one Engine over the OpenAI API.

    app = build_app(engine, served_model_names=["my-model"], api_key=None)
    uvicorn.run(app)         # the engine thread starts and stops with the app's lifespan

Routes: POST /v1/completions, /v1/chat/completions, /v1/responses (a generating engine's),
/v1/embeddings, /score, /rerank, /classify, /pooling (a pooling engine's), /tokenize, /detokenize;
GET /v1/models, /health, /version, /metrics.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

import kvserve
from kvserve.engine import Engine
from kvserve.lora import LoRARequest
from kvserve.server import (chat, classify, completions, embeddings, endpoints, lora_routes, metrics, pooling,
                            responses_api, scores)
from kvserve.server.async_engine import DEFAULT_MAX_WAITING, AsyncEngine
from kvserve.server.errors import install_error_handlers
from kvserve.server.middleware import ApiKeyMiddleware, BodySizeMiddleware, RequestIdHeaderMiddleware
from kvserve.server.responses_store import DEFAULT_MAX_STORED_RESPONSES, ResponsesStore
from kvserve.server.request_log import RequestLog
from kvserve.server.served_model import ServedModel
from kvserve.server.stats_logger import StatsLogger

DEFAULT_MAX_BODY_BYTES = 16 * 2**20


@dataclass(frozen=True)
class CorsPolicy:
    """Cross-origin requests from browsers: vLLM's flags and defaults (any origin, method and header;
    no credentials)."""

    origins: list[str] = field(default_factory=lambda: ["*"])
    methods: list[str] = field(default_factory=lambda: ["*"])
    headers: list[str] = field(default_factory=lambda: ["*"])
    credentials: bool = False


def build_app(engine: Engine, *, served_model_names: list[str], root: str | None = None, api_key: str | None = None,
              max_waiting: int = DEFAULT_MAX_WAITING, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
              trust_request_chat_template: bool = False, cors: CorsPolicy | None = None,
              prompt_tokens_details: bool = False, auto_tool_parser: str | None = None,
              loras: list[LoRARequest] = (), runtime_lora_updating: bool = False,
              max_stored_responses: int = DEFAULT_MAX_STORED_RESPONSES, force_include_usage: bool = False,
              tokens_as_token_ids: bool = False, request_id_headers: bool = False,
              log_stats_interval_s: float | None = None, request_log: RequestLog | None = None,
              api_docs: bool = True) -> FastAPI:
    """served_model_names: the names requests may use (the first is the one responses carry).
    root: what /v1/models reports the model was loaded from (default: the first name).
    api_key: when set, every /v1 route (and /score, /rerank) requires `Authorization: Bearer <api_key>`.
    max_waiting: requests accepted but not yet running, beyond which the server answers 503.
    max_body_bytes: larger request bodies get 413.
    trust_request_chat_template: accept chat templates sent with requests (refused otherwise).
    cors: which browser origins may call the API (default: any, as vLLM's).
    prompt_tokens_details: usage carries prompt_tokens_details.cached_tokens (prefix-cache hits).
    auto_tool_parser: the syntax of tool calls read for tool_choice "auto" (server/tool_parsers/);
    None refuses "auto". The engine's reasoning_parser tells chat replies' thinking from their answer.
    loras: LoRA adapters served under their names (an engine built with enable_lora).
    runtime_lora_updating: serve vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter.
    max_stored_responses: the Responses API's responses kept for previous_response_id (0: none).
    force_include_usage: every stream ends with a usage chunk, as if it asked (vLLM's
    --enable-force-include-usage).
    tokens_as_token_ids: logprobs name tokens "token_id:N" unless a request says otherwise (vLLM's
    --return-tokens-as-token-ids).
    request_id_headers: every response carries X-Request-Id (vLLM's --enable-request-id-headers).
    log_stats_interval_s: log a line of the engine's throughput and state this often (stats_logger.py);
    None: never.
    request_log: log each request's prompts and parameters as it is submitted (vLLM's
    --enable-log-requests); None: not.
    api_docs: serve FastAPI's /docs, /redoc and /openapi.json (vLLM's --disable-fastapi-docs turns them off)."""
    served = ServedModel(engine, served_model_names, root or served_model_names[0], trust_request_chat_template,
                         prompt_tokens_details, auto_tool_parser, loras, force_include_usage, tokens_as_token_ids)
    config = engine.scheduler.config
    cache_config = {"block_size": str(config.block_size), "num_gpu_blocks": str(config.num_blocks - 1),
                    "enable_prefix_caching": str(config.enable_prefix_caching),
                    "cache_dtype": str(engine.cache_dtype).removeprefix("torch.")}
    server_metrics = metrics.ServerMetrics(served.name, served.max_model_len,
                                           engine.loras.max_loras if engine.loras is not None else None,
                                           config.max_num_batched_tokens, cache_config,
                                           config.num_speculative_tokens)
    async_engine = AsyncEngine(engine, max_waiting=max_waiting, observer=server_metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async_engine.start()
        stats = None
        if log_stats_interval_s is not None:
            stats = asyncio.create_task(StatsLogger(async_engine, server_metrics, log_stats_interval_s).run())
        try:
            yield
        finally:
            if stats is not None:
                stats.cancel()
            await async_engine.shutdown()

    docs = {} if api_docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="kvserve", version=kvserve.__version__, lifespan=lifespan, **docs)
    app.state.engine = async_engine
    app.state.model = served
    app.state.metrics = server_metrics
    app.state.request_log = request_log
    app.state.responses = ResponsesStore(max_stored_responses)
    for module in (completions, chat, responses_api, embeddings, scores, classify, pooling, endpoints, metrics):
        app.include_router(module.router)
    if runtime_lora_updating:
        if engine.loras is None:
            raise ValueError("loading LoRA adapters at runtime needs an engine built with enable_lora (--enable-lora)")
        app.include_router(lora_routes.router)
    install_error_handlers(app)
    if api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)
    app.add_middleware(BodySizeMiddleware, max_body_bytes=max_body_bytes)
    if request_id_headers:
        app.add_middleware(RequestIdHeaderMiddleware)
    cors = cors or CorsPolicy()
    # Outermost: a browser's preflight (OPTIONS, no API key) is answered before the key is checked.
    app.add_middleware(CORSMiddleware, allow_origins=cors.origins, allow_methods=cors.methods,
                       allow_headers=cors.headers, allow_credentials=cors.credentials)
    return app
