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
    """Tests that set no platform home of their own write into a temporary one, never ./.mlops; and no test
    leaves MLflow's default ./mlruns in the working folder (a run logged outside the home's experiments)."""
    home = tmp_path_factory.mktemp("mlops-home")
    saved = os.environ.get("MLOPS_HOME")
    strays = [Path.cwd() / name for name in ("mlruns", ".mlops")]
    before = {path for path in strays if path.exists()}
    os.environ["MLOPS_HOME"] = str(home)
    yield home
    if saved is None:
        os.environ.pop("MLOPS_HOME", None)
    else:
        os.environ["MLOPS_HOME"] = saved
    left = [str(path) for path in strays if path.exists() and path not in before]
    assert not left, f"tests wrote into the working folder: {left}"


# The modules whose tests run on Ray: the session's one instance (the `local_ray` fixture) or one of their own
# (`mlops serve start` in test_serving_ingress).
RAY_MODULES = frozenset(
    {
        "tests/cli/test_bench_reliability.py",
        "tests/models/test_ray_training.py",
        "tests/monitoring/test_batch_scoring_on_ray.py",
        "tests/serving/test_binary_tensors.py",
        "tests/serving/test_openapi_properties.py",
        "tests/serving/test_rollout.py",
        "tests/serving/test_serving.py",
        "tests/serving/test_serving_ingress.py",
    }
)


def _module(nodeid: str) -> str:
    return nodeid.split("::")[0]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """RAY_MODULES stays true: a test elsewhere on the session's Ray would start a second Ray on the other worker."""
    strays = sorted({_module(item.nodeid) for item in items if "local_ray" in item.fixturenames} - RAY_MODULES)
    if strays:
        raise pytest.UsageError(f"tests on the session's Ray outside RAY_MODULES in tests/conftest.py: {', '.join(strays)}")


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: the suite's two workers (deploy/local/test.sh)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Work units for the workers: every module on Ray in one unit, so one worker holds the session's Ray and Serve and
    no two Rays start at once; every other module whole, so its module-scoped fixtures are built once. (xdist's
    `--dist loadgroup` marks do not reach its scheduler on pytest 9.2: pytest-dev/pytest-xdist#1386.)"""
    from xdist.scheduler import LoadScopeScheduling

    class RayModulesInOneUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = _module(nodeid)
            return "ray" if module in RAY_MODULES else module

    return RayModulesInOneUnit(config, log)
