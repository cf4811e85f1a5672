"""Loopback helpers for tests that start servers."""

from __future__ import annotations

from mlops_assets.cli.ports import claim_port


def free_port() -> int:
    """A port for a test's server: claimed below the ranges Linux and Ray take ports from at random, so
    nothing else binds it between now and the server's start (`mlops_assets.cli.ports`)."""
    return claim_port()
