"""Test configuration: the shared fixtures live in tests/support and are registered here once, as
pytest plugins; test modules use them by name and never import them (or each other)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["tests.support.platform", "tests.support.models", "tests.support.ray_instance", "tests.support.serving"]


@pytest.fixture(scope="session", autouse=True)
def session_home(tmp_path_factory) -> Iterator[Path]:
    """Tests that set no platform home of their own write into a temporary one, never ./.mlops."""
    home = tmp_path_factory.mktemp("mlops-home")
    saved = os.environ.get("MLOPS_HOME")
    os.environ["MLOPS_HOME"] = str(home)
    yield home
    if saved is None:
        os.environ.pop("MLOPS_HOME", None)
    else:
        os.environ["MLOPS_HOME"] = saved
