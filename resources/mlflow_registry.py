"""MLflow tracking and model registry as a typed Dagster resource.

dagster-mlflow's ``mlflow_tracking`` is a legacy untyped ``@resource``
(dagster#15053) and its ``end_mlflow_on_run_finished`` hook ends MLflow runs
before the Dagster run is over (dagster#21872). This resource instead hands out
an ``MlflowClient`` bound to configured URIs, and serializes writes to an
embedded SQLite store, which fails with "database is locked" under parallel
writers (mlflow#4123).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from dagster import ConfigurableResource, EnvVar
from filelock import FileLock, Timeout
from pydantic import Field, model_validator

from mlops_assets.core.home import MlopsHome

if TYPE_CHECKING:  # mlflow is imported where used: it adds about 1.5 s to every process that loads the definitions
    from mlflow import MlflowClient

# mlflow's fluent API (start_run, log_model) keeps the tracking URI in a process global
_FLUENT = threading.RLock()


def separate_registry(registry_uri: str, tracking_uri: str) -> None:
    if registry_uri and registry_uri != tracking_uri:
        raise ValueError(
            f"registry_uri {registry_uri!r} differs from tracking_uri {tracking_uri or 'the home default'!r}: serving and "
            "the sensors read models where they are tracked, so a separate registry is not supported; leave registry_uri empty"
        )


class MlflowRegistryResource(ConfigurableResource):
    """Where runs, artifacts and registered models live; empty values mean the $MLOPS_HOME defaults."""

    tracking_uri: str = Field(default="", description="MLflow tracking URI; empty: sqlite under $MLOPS_HOME/mlflow.")
    registry_uri: str = Field(
        default="", description="Model registry URI: empty or the tracking URI (serving reads models where they are tracked)."
    )
    artifact_root: str = Field(
        default="",
        description="Artifact location of new experiments; empty: the tracking server's own (its --serve-artifacts proxy) "
        "for an http(s) tracking URI, else $MLOPS_HOME/mlflow/artifacts.",
    )
    ui_url: str = Field(default="http://127.0.0.1:5000", description="MLflow UI base URL, for links in Dagster metadata.")
    lock_timeout_s: float = Field(default=120.0, gt=0, description="Longest wait for the SQLite store's write lock.")

    @model_validator(mode="after")
    def _one_store(self) -> MlflowRegistryResource:
        """A registry apart from the tracking store was written to by training and promotion, while serving, the
        champion sensor and rollouts read aliases at the tracking URI: nothing was ever deployed. Refused until
        serving takes a registry URI of its own (an EnvVar is checked once resolved, by `client`)."""
        plain = [v for v in (self.registry_uri, self.tracking_uri) if isinstance(v, str) and not isinstance(v, EnvVar)]
        if len(plain) == 2 and self.tracking_uri:  # an EnvVar is a str holding the variable's name
            separate_registry(self.registry_uri, self.tracking_uri)
        return self

    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or MlopsHome.from_env().mlflow_tracking_uri

    def resolved_registry_uri(self) -> str:
        return self.registry_uri or self.resolved_tracking_uri()

    def resolved_artifact_root(self) -> str | None:
        """None: the tracking server chooses (a run pod's local folder would vanish with the pod, and replicas on other
        hosts could not download the model from it)."""
        if self.artifact_root:
            return self.artifact_root
        if self.resolved_tracking_uri().startswith(("http://", "https://")):
            return None
        return str(MlopsHome.from_env().mlflow / "artifacts")

    def client(self) -> MlflowClient:
        from mlflow import MlflowClient

        self._ensure_sqlite_folder()
        separate_registry(self.resolved_registry_uri(), self.resolved_tracking_uri())
        return MlflowClient(tracking_uri=self.resolved_tracking_uri(), registry_uri=self.resolved_registry_uri())

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return f"{self.ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"

    def model_url(self, name: str, version: str) -> str:
        return f"{self.ui_url.rstrip('/')}/#/models/{name}/versions/{version}"

    def artifact_url(self, experiment_id: str, run_id: str, path: str) -> str:
        """A run's artifact in the MLflow UI, which renders an HTML file in place (and offline)."""
        return f"{self.run_url(experiment_id, run_id)}/artifacts/{path}"

    def delete_artifact(self, run_id: str, path: str) -> None:
        """Delete a run's artifact through MLflow's artifact repository for that run (a folder, or the tracking
        server's mlflow-artifacts proxy, which deletes it from the store behind it); one already gone is no error."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        root = self.client().get_run(run_id).info.artifact_uri
        get_artifact_repository(root, tracking_uri=self.resolved_tracking_uri()).delete_artifacts(path)

    def _sqlite_path(self) -> Path | None:
        uri = self.resolved_tracking_uri()
        return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None

    def _ensure_sqlite_folder(self) -> None:
        path = self._sqlite_path()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def writing(self) -> Iterator[MlflowClient]:
        """Exclusive write access: a file lock beside an SQLite store, and the fluent API pointed here.

        The lock also covers the store's first creation, where two processes
        would otherwise both run the schema migrations.
        """
        import mlflow

        path = self._sqlite_path()
        with _FLUENT:
            lock = FileLock(str(path) + ".lock", timeout=self.lock_timeout_s) if path else None
            if lock is not None:
                path.parent.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
                try:
                    lock.acquire()
                except Timeout:
                    raise TimeoutError(
                        f"another writer held the MLflow store lock {lock.lock_file} for more than {self.lock_timeout_s:g}s"
                    ) from None
            saved = _save_fluent_uris()
            try:
                mlflow.set_tracking_uri(self.resolved_tracking_uri())
                mlflow.set_registry_uri(self.resolved_registry_uri())
                yield self.client()
            finally:
                _restore_fluent_uris(saved)
                if lock is not None:
                    lock.release()

    def experiment_id(self, client: MlflowClient, name: str) -> str:
        """The experiment for a pipeline, created with its artifacts under the configured root."""
        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        root = self.resolved_artifact_root()
        if root is None:
            return client.create_experiment(name)
        if "://" not in root:
            Path(root).mkdir(parents=True, exist_ok=True)
            root = Path(root).resolve().as_uri()
        return client.create_experiment(name, artifact_location=f"{root.rstrip('/')}/{name}")


_URI_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def _save_fluent_uris() -> tuple:
    """mlflow.set_*_uri change module globals and os.environ; other code in the process must not see ours."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    return (tracking_utils._tracking_uri, registry_utils._registry_uri, {k: os.environ.get(k) for k in _URI_ENV})


def _restore_fluent_uris(saved: tuple) -> None:
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils

    tracking_uri, registry_uri, env = saved
    mlflow.set_tracking_uri(tracking_uri)
    registry_utils._registry_uri = registry_uri
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def mlflow_resource_for(home: MlopsHome) -> MlflowRegistryResource:
    return MlflowRegistryResource(tracking_uri=home.mlflow_tracking_uri, artifact_root=str(home.mlflow / "artifacts"))
