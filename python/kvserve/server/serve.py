"""`kvserve serve`: bind the port, load the model, serve until SIGINT/SIGTERM, exit 0.

The port is bound before the model loads, so a port in use fails at once (and so do TLS files
that cannot be read: --ssl-keyfile and --ssl-certfile serve HTTPS). On a signal uvicorn
stops accepting connections and in-flight requests get --shutdown-timeout seconds to finish; then
the engine stops, which aborts the rest, and the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import ssl
from pathlib import Path

import uvicorn

from kvserve.engine_args import engine_from_args
from kvserve.loader.default_model import DEFAULT_MODEL_NAME
from kvserve.lora import LoRARequest
from kvserve.server.app import CorsPolicy, build_app
from kvserve.server.async_engine import AsyncEngine
from kvserve.server.request_log import RequestLog
from kvserve.server.stats_logger import log_stats_interval
from kvserve.server.tool_parsers import TOOL_PARSERS

logger = logging.getLogger("kvserve")


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise SystemExit(f"kvserve serve: cannot listen on {host}:{port}: {e.strerror}") from None
    # Connections made while the model loads wait in the backlog instead of being refused.
    sock.listen(2048)
    return sock


def _url(sock: socket.socket, scheme: str) -> str:
    host, port = sock.getsockname()[:2]
    return f"{scheme}://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{scheme}://{host}:{port}"


def _check_tls_files(args: argparse.Namespace) -> None:
    """Read the key, certificate and CA files as uvicorn will, before the model loads: a bad one
    stops the server at once, with the file named."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(args.ssl_certfile, args.ssl_keyfile)
        if args.ssl_ca_certs is not None:
            context.load_verify_locations(args.ssl_ca_certs)
    except (OSError, ssl.SSLError) as e:
        raise SystemExit(f"kvserve serve: cannot use --ssl-keyfile {args.ssl_keyfile}, --ssl-certfile "
                         f"{args.ssl_certfile}{f', --ssl-ca-certs {args.ssl_ca_certs}' if args.ssl_ca_certs else ''}: "
                         f"{e}") from None


# uvicorn cancels what still runs this long after the engine stopped (all should have ended by then).
_CANCEL_AFTER_S = 5.0


class _GracefulServer(uvicorn.Server):
    """uvicorn's shutdown, with the engine stopped when the grace period ends: requests still
    running then end with an error the client can read (an SSE error event and [DONE], or a 503)
    rather than with a cut connection."""

    def __init__(self, config: uvicorn.Config, engine: AsyncEngine, grace_s: float):
        super().__init__(config)
        self._engine = engine
        self._grace_s = grace_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        stop = asyncio.get_running_loop().call_later(self._grace_s, self._engine.shutdown)
        try:
            await super().shutdown(sockets)
        finally:
            stop.cancel()


def _check_model_argument(args: argparse.Namespace) -> None:
    """`kvserve serve --served-model-name NAME MODEL`: the flag takes one or more names, so MODEL
    became a name and the default model would be served under both. Refused when a name is a model:
    a checkpoint directory or a GGUF file."""
    if args.model is None and args.served_model_name:
        paths = [name for name in args.served_model_name
                 if (Path(name) / "config.json").is_file() or (name.endswith(".gguf") and Path(name).is_file())]
        if paths:
            raise SystemExit(f"kvserve serve: --served-model-name took {paths[0]!r}, which is a model: give the model "
                             "first (kvserve serve MODEL --served-model-name NAME)")


def run_server(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(asctime)s %(name)s: %(message)s")
    _check_model_argument(args)
    if (args.ssl_keyfile is None) != (args.ssl_certfile is None):
        raise SystemExit("kvserve serve: HTTPS needs both --ssl-keyfile and --ssl-certfile")
    if args.ssl_keyfile is None and (args.ssl_ca_certs is not None or args.ssl_cert_reqs):
        raise SystemExit("kvserve serve: --ssl-ca-certs and --ssl-cert-reqs go with --ssl-keyfile and --ssl-certfile")
    if args.ssl_keyfile is not None:
        _check_tls_files(args)
    if args.enable_auto_tool_choice and args.tool_call_parser is None:
        raise SystemExit("kvserve serve: --enable-auto-tool-choice needs --tool-call-parser "
                         f"({', '.join(TOOL_PARSERS)})")
    try:
        log_stats_interval_s = None if args.disable_log_stats else log_stats_interval()
        request_log = RequestLog(args.max_log_len) if args.enable_log_requests else None
    except ValueError as e:
        raise SystemExit(f"kvserve serve: {e}") from None
    sock = _listen(args.host, args.port)
    names = args.served_model_name or [args.model or DEFAULT_MODEL_NAME]
    try:
        engine = engine_from_args(args, reasoning_parser=args.reasoning_parser, enable_lora=args.enable_lora,
                                  max_loras=max(len(args.lora_modules), 1) if args.max_loras is None else args.max_loras,
                                  max_lora_rank=args.max_lora_rank)
        cors = CorsPolicy(args.allowed_origins, args.allowed_methods, args.allowed_headers, args.allow_credentials)
        app = build_app(engine, served_model_names=names, root=args.model or DEFAULT_MODEL_NAME,
                        api_key=args.api_key, max_waiting=args.max_waiting,
                        trust_request_chat_template=args.trust_request_chat_template, cors=cors,
                        prompt_tokens_details=args.enable_prompt_tokens_details,
                        auto_tool_parser=args.tool_call_parser if args.enable_auto_tool_choice else None,
                        loras=[LoRARequest(name, i + 1, path) for i, (name, path) in enumerate(args.lora_modules)],
                        runtime_lora_updating=args.allow_runtime_lora_updating,
                        max_stored_responses=args.max_stored_responses,
                        force_include_usage=args.enable_force_include_usage,
                        tokens_as_token_ids=args.return_tokens_as_token_ids,
                        request_id_headers=args.enable_request_id_headers, log_stats_interval_s=log_stats_interval_s,
                        request_log=request_log, api_docs=not args.disable_fastapi_docs)
    except (ValueError, RuntimeError) as e:  # bad flags, a model that cannot be read or fetched
        raise SystemExit(f"kvserve serve: {e}") from None
    # The Engine has logged what it loaded and its KV cache in blocks and tokens.
    logger.info("serving %s (max_model_len %d) at %s/v1 (%s)", ", ".join(names + [m[0] for m in args.lora_modules]),
                engine.max_model_len, _url(sock, "http" if args.ssl_keyfile is None else "https"),
                "API key required" if args.api_key else "no API key")
    config = uvicorn.Config(app, log_level=args.uvicorn_log_level, access_log=not args.disable_uvicorn_access_log,
                            root_path=args.root_path,
                            timeout_graceful_shutdown=args.shutdown_timeout + _CANCEL_AFTER_S,
                            ssl_keyfile=args.ssl_keyfile, ssl_certfile=args.ssl_certfile,
                            ssl_ca_certs=args.ssl_ca_certs, ssl_cert_reqs=args.ssl_cert_reqs)
    server = _GracefulServer(config, app.state.engine, args.shutdown_timeout)
    # uvicorn handles SIGINT/SIGTERM while it serves, then re-raises the signal it caught into the
    # handlers that were there before; no-op ones make a graceful shutdown end with exit code 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    asyncio.run(server.serve(sockets=[sock]))
    return 0 if server.started else 1
