"""Binary and multiclass pipelines train, register and promote; two train at once on one SQLite store.

Two small declared pipelines (CSV and Parquet landing) are ingested through
their Dagster jobs; their training jobs then run in two separate processes at
the same time against one fresh MLflow SQLite store (mlflow#4123).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from mlops_assets.core.home import MlopsHome
from mlops_assets.core.names import CHAMPION
from mlops_assets.models.training import predict, prepare, read_window
from resources.audit_log import history
from resources.registered_models import alias_version, load_booster, plan_of
from tests.pipelines.classifier_features import CLASSES, declaration, land
from tests.support.platform import Platform

REPO = Path(__file__).resolve().parents[2]
DAYS = 6


@pytest.fixture(scope="module")
def classifier_home(tmp_path_factory) -> Iterator[Platform]:
    root = tmp_path_factory.mktemp("classifiers")
    (root / "dagster").mkdir()
    decls = [declaration("binary", fmt="csv"), declaration("multiclass", fmt="parquet")]
    with dg.instance_for_test(temp_dir=str(root / "dagster")) as instance:
        plat = Platform(root, decls, instance)
        for decl in decls:
            plat.ingest(decl.name, land(decl, plat.landing, DAYS))
        yield plat


def test_binary_and_multiclass_train_in_parallel_processes(classifier_home, monkeypatch):
    plat = classifier_home
    root = plat.root
    assert not (root / "mlflow").exists()  # a fresh store: both processes race to create it
    env = dict(os.environ, MLOPS_HOME=str(root), PYTHONPATH=str(REPO))
    workers = {
        name: subprocess.Popen(
            [sys.executable, "-m", "tests.pipelines.train_worker", str(root), name],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in ("binary_demo", "multiclass_demo")
    }
    outputs = {name: p.communicate(timeout=540)[0] for name, p in workers.items()}
    for name, p in workers.items():
        assert p.returncode == 0, f"{name} failed:\n{outputs[name][-4000:]}"
    assert "database is locked" not in "".join(outputs.values())

    monkeypatch.setenv("MLOPS_HOME", str(root))
    from resources.defaults import model_resources

    registry = model_resources(MlopsHome(root))["mlflow"]
    client = registry.client()
    for task, name in (("binary", "binary_demo"), ("multiclass", "multiclass_demo")):
        champion = alias_version(client, name, CHAMPION)
        assert champion is not None and int(champion.version) == 1, name
        tags = champion.tags
        assert tags["mlops.task"] == task
        assert json.loads(tags["mlops.classes"]) == CLASSES[task]
        assert json.loads(tags["mlops.feature_columns"]) == ["f_x1", "f_x2", "f_x1_x2", "color_code"]
        assert json.loads(tags["mlops.categorical_features"]) == ["color_code"]
        assert [r["action"] for r in history(plat.delta, name).iter_rows(named=True)] == ["promote"]

        # predictions follow the contract: P(classes[1]) for binary, per-class probabilities for multiclass
        plan = plan_of(champion)
        data = prepare(read_window(plan, plat.delta), plan)
        assert data.rows_without_target == DAYS  # one unlabelled row per day, excluded
        p = predict(load_booster(registry, name, 1), data.holdout.X, task)
        if task == "binary":
            assert p.shape == (data.holdout.rows,) and ((p >= 0) & (p <= 1)).all()
            assert float(tags["holdout.auc"]) >= 0.7
        else:
            assert p.shape == (data.holdout.rows, 3) and np.allclose(p.sum(axis=1), 1.0)
            accuracy = float(np.mean(p.argmax(axis=1) == data.holdout.y))
            assert accuracy == pytest.approx(float(tags["holdout.accuracy"])) and accuracy > 0.5
