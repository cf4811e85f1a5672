"""A real, throwaway PostgreSQL server for the deployment tests (`mlops_assets.cli.bench.throwaway_postgres`,
which the pipeline bench's Postgres sides use too); without the server binaries the tests skip and say why."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from mlops_assets.cli.bench.throwaway_postgres import PostgresServer, throwaway_postgres, unavailable

__all__ = ["PostgresServer", "postgres_server"]


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    with throwaway_postgres() as server:
        yield server
