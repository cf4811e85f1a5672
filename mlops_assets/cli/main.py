"""`mlops`: one entry point for what is not a Dagster materialization.

Each command group lives in its own module and registers its subcommands here.
"""

from __future__ import annotations

import argparse
import os
import sys

from mlops_assets.cli import bench_commands, data_commands, model_commands
from mlops_assets.cli import serve_commands as serving_commands
from mlops_assets.core.declaration import DeclarationError

COMMAND_MODULES = [data_commands, model_commands, serving_commands, bench_commands]


class CommandError(Exception):
    """A command that cannot do what was asked; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlops", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (CommandError, DeclarationError, LookupError, ValueError) as err:
        print(f"mlops {args.command}: error: {err}", file=sys.stderr)
        return 2


def entry() -> int:
    """The `mlops` console script. Ray 2.60 turns token auth on for the local cluster
    `mlops serve start` creates; the other commands join it by address, which needs the mode
    in the environment before Ray is imported (so here, not in `main`, which tests call in a
    process whose Ray is already set up)."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    return main()


if __name__ == "__main__":
    sys.exit(entry())
