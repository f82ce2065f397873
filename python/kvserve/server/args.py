"""`kvserve serve`'s flags (vLLM's names). Only argparse here: the server's packages are imported
when the command runs, so `kvserve --help` works without them."""

from __future__ import annotations

import argparse
import json
import os

from kvserve.engine_args import (SERVING_MAX_NUM_BATCHED_TOKENS, add_chat_template_argument, add_engine_arguments,
                                 add_model_argument, flag_type)
from kvserve.grammar import REASONING_PARSERS
from kvserve.server.async_engine import DEFAULT_MAX_WAITING
from kvserve.server.responses_store import DEFAULT_MAX_STORED_RESPONSES
from kvserve.server.tool_parsers import TOOL_PARSERS

DEFAULT_SHUTDOWN_TIMEOUT_S = 10.0


# vLLM's form of the CORS flags: a JSON list of strings, e.g. '["https://example.com"]'.
_json_list = flag_type(json.loads, lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v),
                        "a JSON list of strings, e.g. '[\"*\"]'")


def _parse_lora_module(value: str) -> tuple[str, str] | None:
    """vLLM's two forms: name=path, or JSON {"name": ..., "path": ...} (other keys ignored)."""
    if value.lstrip().startswith("{"):
        module = json.loads(value)
        return (module.get("name"), module.get("path")) if isinstance(module, dict) else None
    name, equals, path = value.partition("=")
    return (name, path) if equals else None


_lora_module = flag_type(_parse_lora_module, lambda m: all(isinstance(s, str) and s for s in m),
                          "NAME=PATH or JSON {\"name\": ..., \"path\": ...}")
_port = flag_type(int, lambda port: 0 <= port <= 65535, "a port in [0, 65535]")
_seconds = flag_type(float, lambda seconds: 0 <= seconds < float("inf"), "a number of seconds >= 0")


def _run_serve(args: argparse.Namespace) -> int:
    from kvserve.server.serve import run_server

    return run_server(args)


def add_serve_parser(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="serve a model over the OpenAI API (FastAPI + uvicorn)",
                                description="Serve a model over an OpenAI-compatible HTTP API.")
    add_model_argument(serve)
    add_engine_arguments(serve, max_num_batched_tokens=SERVING_MAX_NUM_BATCHED_TOKENS)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: 127.0.0.1; 0.0.0.0 opens the server to the network)")
    serve.add_argument("--port", type=_port, default=8000, help="port (default: 8000; 0 picks a free one)")
    serve.add_argument("--api-key", default=os.environ.get("KVSERVE_API_KEY"),
                       help="require 'Authorization: Bearer KEY' on every /v1 route (default: $KVSERVE_API_KEY)")
    serve.add_argument("--ssl-keyfile", metavar="PATH",
                       help="serve HTTPS with this private key (PEM), and --ssl-certfile")
    serve.add_argument("--ssl-certfile", metavar="PATH", help="the server's certificate (PEM) for HTTPS")
    serve.add_argument("--ssl-ca-certs", metavar="PATH",
                       help="CA certificates (PEM) that client certificates are checked against")
    serve.add_argument("--ssl-cert-reqs", type=int, choices=(0, 1, 2), default=0,
                       help="client certificates: 0 not asked for, 1 checked when given, 2 required "
                       "(Python's ssl.CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED; default: 0)")
    serve.add_argument("--served-model-name", nargs="+", metavar="NAME",
                       help="the names requests may use; the first one is returned in responses "
                       "(default: the model argument)")
    add_chat_template_argument(serve)
    serve.add_argument("--trust-request-chat-template", action="store_true",
                       help="accept chat templates sent with requests (chat_template, or chat_template_kwargs' "
                       "chat_template): a template is code that runs on the server; refused by default")
    for name, what in (("origins", "origins"), ("methods", "HTTP methods"), ("headers", "request headers")):
        serve.add_argument(f"--allowed-{name}", type=_json_list, default=["*"], metavar="JSON",
                           help=f"the {what} browsers may call the API with, a JSON list (default: [\"*\"], any)")
    serve.add_argument("--enable-prompt-tokens-details", action="store_true",
                       help="usage reports prompt_tokens_details.cached_tokens: the prompt tokens found in the "
                       "prefix cache")
    serve.add_argument("--enable-force-include-usage", action="store_true",
                       help="every streamed response ends with a usage chunk, as if it asked with "
                       "stream_options.include_usage")
    serve.add_argument("--enable-request-id-headers", action="store_true",
                       help="every response carries the header X-Request-Id: the request's own, or a fresh one "
                       "(a request's X-Request-Id names its response either way: cmpl-<id>, chatcmpl-<id>)")
    serve.add_argument("--enable-log-requests", action="store_true",
                       help="log each request's prompts, sampling parameters and prompt token ids as it is "
                       "submitted")
    serve.add_argument("--max-log-len", type=int, metavar="N",
                       help="with --enable-log-requests, the characters of a prompt and the token ids logged "
                       "(default: all)")
    serve.add_argument("--disable-log-stats", action="store_true",
                       help="no periodic log line of throughput, running and waiting requests and KV cache usage "
                       "(every KVSERVE_LOG_STATS_INTERVAL seconds, default 10)")
    serve.add_argument("--return-tokens-as-token-ids", action="store_true",
                       help="logprobs name their tokens 'token_id:N' (a request's return_tokens_as_token_ids "
                       "overrides this): tokens that are not whole characters stay tellable apart")
    serve.add_argument("--enable-auto-tool-choice", action="store_true",
                       help="answer tool_choice 'auto' (the default with tools) by reading the calls the model "
                       "writes, with --tool-call-parser")
    serve.add_argument("--tool-call-parser", choices=TOOL_PARSERS,
                       help="the syntax the model writes tool calls in: hermes (Hermes, Qwen2.5, Qwen3), "
                       "llama3_json or llama4_json (Llama 3.1-3.3, 4), pythonic or llama4_pythonic (Llama 3.2, 4), "
                       "mistral")
    serve.add_argument("--enable-lora", action="store_true", help="serve LoRA adapters (--lora-modules)")
    serve.add_argument("--lora-modules", nargs="+", type=_lora_module, default=[], metavar="NAME=PATH",
                       help="LoRA adapters (PEFT directories) served under their names, with --enable-lora; "
                       "a request whose model is one runs with that adapter")
    serve.add_argument("--allow-runtime-lora-updating", action="store_true",
                       default=os.environ.get("KVSERVE_ALLOW_RUNTIME_LORA_UPDATING", "").lower() in ("1", "true"),
                       help="serve vLLM's POST /v1/load_lora_adapter and /v1/unload_lora_adapter, which read "
                       "adapters from paths on this machine (default: $KVSERVE_ALLOW_RUNTIME_LORA_UPDATING)")
    serve.add_argument("--max-loras", type=int, default=None,
                       help="LoRA adapters kept loaded; another drops the least recently used, to read again when "
                       "next asked for (default: as many as --lora-modules, at least 1)")
    serve.add_argument("--max-lora-rank", type=int, default=16, help="the largest LoRA rank accepted (default: 16)")
    serve.add_argument("--reasoning-parser", choices=REASONING_PARSERS,
                       help="return a reasoning model's thinking (<think>...</think>) as the reply's `reasoning`, "
                       "apart from its content: qwen3 or deepseek_r1")
    serve.add_argument("--allow-credentials", action="store_true",
                       help="let browsers send credentials (cookies, authorization) cross-origin")
    serve.add_argument("--max-stored-responses", type=int, default=DEFAULT_MAX_STORED_RESPONSES, metavar="N",
                       help="Responses API responses kept in memory for previous_response_id and GET "
                       f"/v1/responses/ID, the most recent N (default: {DEFAULT_MAX_STORED_RESPONSES}; 0: none)")
    serve.add_argument("--max-waiting", type=int, default=DEFAULT_MAX_WAITING,
                       help="requests that may wait for a place in the batch; more get 503 "
                       f"(default: {DEFAULT_MAX_WAITING})")
    serve.add_argument("--shutdown-timeout", type=_seconds, default=DEFAULT_SHUTDOWN_TIMEOUT_S, metavar="SECONDS",
                       help="on SIGINT/SIGTERM, how long in-flight requests may finish before they are aborted "
                       f"(default: {DEFAULT_SHUTDOWN_TIMEOUT_S:g})")
    serve.add_argument("--uvicorn-log-level", default="info",
                       choices=("critical", "error", "warning", "info", "debug", "trace"))
    serve.add_argument("--disable-uvicorn-access-log", action="store_true", help="no log line per HTTP request")
    serve.add_argument("--root-path", default="", metavar="PATH",
                       help="the path prefix a reverse proxy serves the API under (ASGI root_path), for the links "
                       "of the API docs")
    serve.add_argument("--disable-fastapi-docs", action="store_true",
                       help="no /docs, /redoc and /openapi.json")
    serve.add_argument("--disable-log-requests", action="store_true",
                       help="accepted for vLLM's older scripts: requests are logged only with --enable-log-requests")
    serve.set_defaults(func=_run_serve)
