"""`kvserve serve`: bind the port, load the model, serve until SIGINT/SIGTERM, exit 0.

The port is bound before the model loads, so a port in use fails at once. On a signal uvicorn
stops accepting connections, gives in-flight requests --shutdown-timeout seconds to finish, cancels
the rest (which aborts them in the engine), and the app's lifespan stops the engine thread.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket

import uvicorn

from kvserve.engine_args import engine_from_args
from kvserve.loader.default_model import DEFAULT_MODEL_NAME
from kvserve.server.app import build_app

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


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"


def run_server(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(asctime)s %(name)s: %(message)s")
    sock = _listen(args.host, args.port)
    names = args.served_model_name or [args.model or DEFAULT_MODEL_NAME]
    try:
        engine = engine_from_args(args)
        app = build_app(engine, served_model_names=names, root=args.model or DEFAULT_MODEL_NAME,
                        api_key=args.api_key, max_waiting=args.max_waiting)
    except ValueError as e:
        raise SystemExit(f"kvserve serve: {e}") from None
    # The Engine has logged what it loaded and its KV cache in blocks and tokens.
    logger.info("serving %s (max_model_len %d) at %s/v1 (%s)", ", ".join(names), engine.max_model_len, _url(sock),
                "API key required" if args.api_key else "no API key")
    config = uvicorn.Config(app, log_level=args.uvicorn_log_level, timeout_graceful_shutdown=args.shutdown_timeout)
    server = uvicorn.Server(config)
    # uvicorn handles SIGINT/SIGTERM while it serves, then re-raises the signal it caught into the
    # handlers that were there before; no-op ones make a graceful shutdown end with exit code 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    asyncio.run(server.serve(sockets=[sock]))
    return 0 if server.started else 1
