"""`mlops`: one entry point for what is not a Dagster materialization.

Each command group lives in its own module and registers its subcommands here.
"""

from __future__ import annotations

import argparse
import os
import sys

from mlops_assets.cli import bench_commands, data_commands, model_commands
from mlops_assets.cli import serve_commands as serving_commands
from mlops_assets.cli.errors import CommandError, Terminated
from mlops_assets.core.declaration import DeclarationError

COMMAND_MODULES = [data_commands, model_commands, serving_commands, bench_commands]


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
        code = int(args.handler(args) or 0)
        sys.stdout.flush()  # a reader gone (`| head -1`) is met here, not in the interpreter's exit
        return code
    except (KeyError, IndexError):
        raise  # lookups inside the code failing are bugs, not bad input
    except (CommandError, DeclarationError, LookupError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as err:
        print(f"mlops {args.command}: error: {_one_line(err)}", file=sys.stderr)  # the input was wrong
        return 2
    except BrokenPipeError:
        # the reader went away (`mlops status | head -1`): what it read is what it wanted, no error to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush of stdout must not fail again
        return 0
    except Terminated:
        return 143  # 128 + SIGTERM, as the shell reports a process that SIGTERM ended
    except KeyboardInterrupt:
        return 130
    except Exception as err:
        if not met_by_users(err):
            raise  # a bug: its traceback is what a report needs
        print(f"mlops {args.command}: error: {type(err).__name__}: {_one_line(err)}", file=sys.stderr)
        return 1


# failures a user meets rather than causes: the machine, a store or a service (not a bug in this code)
USER_FACING = (
    "ModelLoadError",
    "LeaseLost",
    "MlflowException",
    "RestException",
    "CommitFailedError",
    "DeltaError",
    "RayError",
    "RaySystemError",
)


# a database that cannot be opened or is not one (SQLAlchemy's and sqlite3's classes of those exact names; their
# subclasses, such as a ProgrammingError, are bugs)
STORE_UNREADABLE = ("OperationalError", "DatabaseError")


def met_by_users(err: BaseException) -> bool:
    """OS errors (permissions, a full disk, a refused connection, timeouts) and the errors of the stores and
    services the platform talks to (MLflow, Delta, Ray, a damaged SQLite store), matched by name so
    `mlops --help` imports none of them."""
    if any(c.__name__ == "RayTaskError" for c in type(err).__mro__):
        return False  # an exception raised in remote code: a bug, keep its traceback
    if type(err).__name__ in STORE_UNREADABLE:
        return True
    return isinstance(err, OSError | TimeoutError) or any(c.__name__ in USER_FACING for c in type(err).__mro__)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:500] + ("..." if len(text) > 500 else "")


def entry() -> int:
    """The `mlops` console script. Ray 2.60 turns token auth on for the local cluster
    `mlops serve start` creates; the other commands join it by address, which needs the mode
    in the environment before Ray is imported (so here, not in `main`, which tests call in a
    process whose Ray is already set up)."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    # MLflow's download progress bars filled stderr of `mlops gate` and `reproduce` (a model file each)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return main()


if __name__ == "__main__":
    sys.exit(entry())
