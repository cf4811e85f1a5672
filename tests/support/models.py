"""Fixtures for model tests: a fresh platform home over copied flights features, small training settings.

The shared ``flights_ingested`` home is read-only, so each test copies its
Delta tables into its own home and gets its own MLflow store, audit log and
Dagster instance.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml

from mlops_assets.cli.main import main as cli_main
from mlops_assets.core.declaration import (
    PACKAGED_PIPELINES,
    PipelineDeclaration,
    declaration_attributes,
    parse_declaration,
)
from mlops_assets.core.home import MlopsHome
from mlops_assets.core.names import CHALLENGER, CHAMPION
from resources.audit_log import history
from resources.defaults import model_resources
from resources.mlflow_registry import MlflowRegistryResource
from resources.registered_models import alias_version
from tests.support.platform import Platform

TRAIN_END = "2013-01-28"  # the window end the monitoring tests train to

# 35 days land (Jan 1 - Feb 4): a 21-day window, 4 hold-out days, 4 validation days
SMALL_TRAINING = {
    "window_days": 21,
    "validation_days": 4,
    "min_rows": 500,
    "num_boost_round": 40,
    "early_stopping_rounds": 10,
    "params": {"learning_rate": 0.1, "num_leaves": 15, "min_data_in_leaf": 40},
}
SMALL_GATES = {"floors": {"mae": 30.0}, "max_regression": 0.02, "holdout_days": 4}


def flights_variant(training: dict | None = None, gates: dict | None = None, policy: str = "auto", **extra) -> PipelineDeclaration:
    data = declaration_attributes(PACKAGED_PIPELINES / "flights" / "defs.yaml")[0]
    data["training"] = {**SMALL_TRAINING, **(training or {})}
    data["gates"] = {**SMALL_GATES, **(gates or {})}
    data["promotion"] = {"policy": policy}
    data.update(extra)
    return parse_declaration(data, "flights (test)")


WORSE = {"num_boost_round": 2, "params": {"learning_rate": 0.02, "num_leaves": 3}}


def aliases(model_home: "ModelHome") -> tuple[int | None, int | None]:
    client = model_home.registry.client()
    champion, challenger = alias_version(client, "flights", CHAMPION), alias_version(client, "flights", CHALLENGER)
    return (int(champion.version) if champion else None, int(challenger.version) if challenger else None)


def actions(plat) -> list[tuple[str, int]]:
    return [(r["action"], r["model_version"]) for r in history(plat.delta, "flights").iter_rows(named=True)]


class ModelHome:
    """One platform home; `platform(decl)` builds definitions for a (changed) declaration over the same state."""

    def __init__(self, root: Path, instance: dg.DagsterInstance):
        self.root = root
        self.instance = instance
        self.home = MlopsHome(root)

    def platform(self, *decls: PipelineDeclaration) -> Platform:
        return Platform(self.root, list(decls), self.instance)

    def declare(self, *decls: PipelineDeclaration) -> None:
        """Point `mlops` commands (MLOPS_PIPELINES) at these declarations."""
        folder = self.root / "pipelines"
        folder.mkdir(exist_ok=True)
        for old in folder.glob("*.yaml"):
            old.unlink()
        for d in decls:
            (folder / f"{d.name}.yaml").write_text(yaml.safe_dump(d.model_dump(mode="json", by_alias=True)))
        os.environ["MLOPS_PIPELINES"] = str(folder)

    def mlops(self, *argv: str, capsys) -> tuple[int, str, str]:
        """Run an `mlops` command in-process; returns (exit code, stdout, stderr)."""
        capsys.readouterr()
        code = cli_main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    @property
    def registry(self) -> MlflowRegistryResource:
        return model_resources(self.home)["mlflow"]


@pytest.fixture(scope="session")
def empty_mlflow_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its schema created once (the migrations take seconds per store)."""
    home = MlopsHome(tmp_path_factory.mktemp("mlflow_template"))
    MlflowRegistryResource(tracking_uri=home.mlflow_tracking_uri).client().search_experiments()
    return home.mlflow / "mlflow.db"


@pytest.fixture
def model_home(tmp_path: Path, flights_ingested: Platform, empty_mlflow_store: Path, monkeypatch) -> Iterator[ModelHome]:
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    monkeypatch.setenv("MLOPS_DELTA_URI", str(tmp_path / "delta"))
    shutil.copytree(flights_ingested.root / "delta", tmp_path / "delta")
    (tmp_path / "mlflow").mkdir()
    shutil.copy(empty_mlflow_store, tmp_path / "mlflow" / "mlflow.db")
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        monkeypatch.setenv("MLOPS_PIPELINES", str(PACKAGED_PIPELINES))
        yield ModelHome(tmp_path, instance)


def sensor_tick(plat, name, cursor=None):
    sensor = plat.defs.resolve_sensor_def(name)
    # with the instance's ref, as the daemon builds it: dynamic partitions a tick adds are then known to its run requests
    ctx = dg.build_sensor_context(
        instance=plat.instance, instance_ref=plat.instance.get_ref(), cursor=cursor, resources=plat.resources(), definitions=plat.defs
    )
    return sensor.evaluate_tick(ctx)


def train(plat, end: str = TRAIN_END, tags: dict | None = None):
    return plat.defs.resolve_job_def("flights_train").execute_in_process(
        instance=plat.instance,
        run_config={"ops": {"flights__model": {"config": {"end_partition": end}}}},
        tags=tags or {},
    )
