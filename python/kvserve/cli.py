"""The `kvserve` command line: one subcommand per product (serve, generate, chat, bench)."""

from __future__ import annotations

import argparse
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
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
