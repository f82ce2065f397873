"""The `kvserve` command line: one subcommand per product (serve, generate, chat, bench)."""

from __future__ import annotations

import argparse
import os
import sys

import kvserve
from kvserve.bench.cli import add_bench_parser
from kvserve.server.args import add_serve_parser
from kvserve.terminal import add_terminal_parsers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvserve",
        description="kvserve: an LLM inference and serving engine (paged KV cache, continuous batching).",
    )
    parser.add_argument("--version", action="version", version=f"kvserve {kvserve.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_serve_parser(commands)
    add_terminal_parsers(commands)
    add_bench_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except BrokenPipeError:
        return stdout_closed()
    except KeyboardInterrupt:  # Ctrl-C before a command handles it itself (a model loading)
        print("kvserve: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


# A process that SIGPIPE ended exits with 128 + 13 in a shell, as `yes | head -1` does; one that
# SIGINT ended with 128 + 2.
EXIT_BROKEN_PIPE = 141
EXIT_INTERRUPTED = 130


def stdout_closed() -> int:
    """The reader of stdout went away (`kvserve generate ... | head -c 20`): stop quietly, as a
    command killed by SIGPIPE does. stdout goes to devnull, so that the interpreter's last flush
    at exit does not fail again (Python's documented handling of SIGPIPE)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
