"""The typed MLflow resource: home defaults, configured URIs, and the write lock other processes respect."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlops_assets.core.home import MlopsHome
from resources.defaults import model_resources
from resources.mlflow_registry import MlflowRegistryResource

REPO = Path(__file__).resolve().parents[2]


def test_defaults_follow_the_platform_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    r = MlflowRegistryResource()
    assert r.resolved_tracking_uri() == MlopsHome(tmp_path).mlflow_tracking_uri
    assert r.resolved_registry_uri() == r.resolved_tracking_uri()
    assert r.resolved_artifact_root() == str(tmp_path / "mlflow" / "artifacts")
    configured = MlflowRegistryResource(tracking_uri="http://mlflow:5000")
    assert (configured.resolved_tracking_uri(), configured.resolved_registry_uri()) == ("http://mlflow:5000", "http://mlflow:5000")
    assert model_resources(MlopsHome(tmp_path / "other"))["mlflow"].resolved_tracking_uri().endswith("other/mlflow/mlflow.db")


def test_config_is_typed():
    with pytest.raises(Exception, match="lock_timeout_s"):
        MlflowRegistryResource(lock_timeout_s=-1)


def test_another_process_waits_for_the_sqlite_write_lock(tmp_path):
    home = MlopsHome(tmp_path)
    registry = MlflowRegistryResource(tracking_uri=home.mlflow_tracking_uri)
    script = (
        "from resources.mlflow_registry import MlflowRegistryResource as R\n"
        f"r = R(tracking_uri={home.mlflow_tracking_uri!r}, lock_timeout_s=1)\n"
        "try:\n"
        "    with r.writing():\n"
        "        print('GOT THE LOCK')\n"
        "except TimeoutError as err:\n"
        "    print(err)\n"
    )
    with registry.writing():
        out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "GOT THE LOCK" not in out.stdout
    assert "another writer held the MLflow store lock" in out.stdout, out.stderr[-2000:]
    # once released, the other process gets it
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "GOT THE LOCK" in out.stdout, out.stderr[-2000:]


def test_writing_leaves_the_process_mlflow_settings_as_they_were(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    before = mlflow.get_tracking_uri()
    registry = MlflowRegistryResource(tracking_uri=MlopsHome(tmp_path).mlflow_tracking_uri)
    with registry.writing():
        assert mlflow.get_tracking_uri() == registry.resolved_tracking_uri()
        assert mlflow.get_registry_uri() == registry.resolved_registry_uri()
    assert mlflow.get_tracking_uri() == before
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ


def test_a_registry_apart_from_the_tracking_store_is_refused(tmp_path, monkeypatch):
    """Training registered there while serving and the champion sensor read aliases at the tracking URI: the
    champion was never deployed. Refused at load, and for values from the environment once resolved."""
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert MlflowRegistryResource(tracking_uri=tracking, registry_uri=tracking).client() is not None
    with pytest.raises(ValueError, match="registry_uri 'databricks-uc' differs from tracking_uri"):
        MlflowRegistryResource(tracking_uri=tracking, registry_uri="databricks-uc")
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    for variable in ("MLOPS_MLFLOW_TRACKING_URI", "MLOPS_MLFLOW_REGISTRY_URI"):  # both EnvVars, equal once resolved
        monkeypatch.setenv(variable, tracking)
    assert model_resources(MlopsHome(tmp_path))["mlflow"].client() is not None
    with pytest.raises(ValueError, match="a separate registry is not supported"):
        MlflowRegistryResource(registry_uri=f"sqlite:///{tmp_path / 'other.db'}").client()
