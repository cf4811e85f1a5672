"""Reading the model registry: versions, aliases, the training plan a version
recorded and its LightGBM file. Shared by the model assets, the sensors and
serving; writing (runs, registration) is the model stage's own."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from mlops_assets.core.lineage import TrainingPlan
from mlops_assets.core.names import CHALLENGER, CHAMPION, ERASED_TAG, PLAN_TAG, SERVING_TAGS
from resources.mlflow_registry import MlflowRegistryResource

if TYPE_CHECKING:  # mlflow and lightgbm are imported where used (seconds at import)
    import lightgbm as lgb
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion


def get_version(client: MlflowClient, name: str, version: str | int) -> ModelVersion:
    """A registered version, or LookupError naming what is missing."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise LookupError(f"model {name} has no version {version}") from None
        raise


def alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version an alias points at, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        missing_alias = err.error_code == "INVALID_PARAMETER_VALUE" and f"alias {alias} not found" in str(err)
        if err.error_code == "RESOURCE_DOES_NOT_EXIST" or missing_alias:
            return None
        raise


def drop_challenger(client: MlflowClient, name: str, version: int) -> None:
    """Remove the `challenger` alias where it names `version`: one pointing at another version (set since, by
    hand or by a newer decision) is not this decision's to remove."""
    held = alias_version(client, name, CHALLENGER)
    if held is not None and int(held.version) == version:
        client.delete_registered_model_alias(name, CHALLENGER)


def load_booster(registry: MlflowRegistryResource, name: str, version: str | int) -> lgb.Booster:
    """The registered LightGBM text model (no pickle), loaded as serving loads it."""
    import lightgbm as lgb

    with tempfile.TemporaryDirectory() as tmp:
        path = _download(registry, name, version, tmp)
        files = sorted(Path(path).rglob("*.lgb"))
        if not files:
            raise LookupError(f"model {name} version {version} has no LightGBM model file")
        return lgb.Booster(model_file=str(files[0]))


def _download(registry: MlflowRegistryResource, name: str, version: str | int, dst: str) -> str:
    import mlflow

    with registry.writing():  # the models:/ resolver reads the process-wide registry URI
        return mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=dst)


class UnplannedVersion(LookupError):
    """A registered version without the training plan the platform records: registered by hand, not trained
    here. There is no window to compare, monitor or retrain against."""


def require_unerased(version: ModelVersion, cannot: str) -> None:
    """Refuses work that reads a version's recorded training data (`cannot`: what it cannot do) once an erasure
    removed rows of it: the Delta versions the plan names no longer hold them, or are vacuumed away."""
    erasure = version.tags.get(ERASED_TAG)
    if erasure:
        raise LookupError(
            f"model {version.name} v{version.version} {cannot}: rows of its training data were erased "
            f"(erasure {erasure}, see `mlops history {version.name}`), so the Delta versions it recorded no longer "
            "hold the data it learned from; a retraining on the current data replaces it"
        )


def plan_of(version: ModelVersion) -> TrainingPlan:
    text = version.tags.get(PLAN_TAG)
    if not text:
        aliases = f" (it holds {', '.join(f'`{a}`' for a in version.aliases)})" if getattr(version, "aliases", None) else ""
        raise UnplannedVersion(
            f"model {version.name} version {version.version}{aliases} records no training plan ({PLAN_TAG}): "
            "the platform did not train it, so nothing can be compared, monitored or retrained against it; "
            "point the alias at a version the platform trained (in MLflow)"
        )
    return TrainingPlan.from_json(text)


def metrics_of(version: ModelVersion, prefix: str = "metric.") -> dict[str, float]:
    return {k.removeprefix(prefix): float(v) for k, v in version.tags.items() if k.startswith(prefix)}


@dataclass(frozen=True)
class Champion:
    version: int
    plan: TrainingPlan
    erased: str | None = None  # the erasure that removed rows this version trained on (ERASED_TAG)

    @property
    def numerical(self) -> list[str]:
        return [c for c in self.plan.feature_columns if c not in self.plan.categorical_features]

    @property
    def categorical(self) -> list[str]:
        return list(self.plan.categorical_features)


def champion(pipeline: str, mlflow: MlflowRegistryResource) -> Champion | None:
    """The current champion and the training plan recorded on it, or None before the first promotion."""
    version = alias_version(mlflow.client(), pipeline, CHAMPION)
    if version is None:
        return None
    return Champion(int(version.version), plan_of(version), version.tags.get(ERASED_TAG))


def model_version(pipeline: str, mlflow: MlflowRegistryResource, version: int) -> Champion:
    mv = get_version(mlflow.client(), pipeline, version)
    return Champion(version, plan_of(mv), mv.tags.get(ERASED_TAG))


def client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


class ModelSource(BaseModel):
    """Where a registered version's files are and the tags that say how to call it. A deployment hands it
    to serving replicas with the version, so a replica that starts (a restart, a scale-up) loads the model
    without an MLflow client: importing MLflow and opening its store were about half of a model server's
    construction and first load (2.1 against 1.0 s without, timed by hand)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int
    artifact_uri: str  # the version's artifact folder, as the registry resolves `models:/<name>/<version>`
    run_id: str = ""
    tags: dict[str, str] = {}


def model_source(tracking_uri: str, name: str, version: int) -> ModelSource:
    """The registry's answer for one version; LookupError when the model has no such version."""
    registry = client(tracking_uri)
    mv = get_version(registry, name, version)
    return ModelSource(
        version=int(version),
        artifact_uri=registry.get_model_version_download_uri(name, str(version)),
        run_id=mv.run_id or "",
        tags={k: v for k, v in mv.tags.items() if k in SERVING_TAGS},
    )


def resolve_alias(tracking_uri: str, name: str, alias: str) -> int | None:
    """The version an alias points at, or None when the model or the alias does not exist. Any other registry
    error is raised: read as "no alias", a registry that did not answer made the champion sensor redeploy
    without a challenger and a replica drop the model it served."""
    found = alias_version(client(tracking_uri), name, alias)
    return None if found is None else int(found.version)


def no_registry_yet(tracking_uri: str) -> str | None:
    """Why there is nothing to read yet (an embedded SQLite store not created), else None: sensors skip
    instead of creating the store by asking."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).exists():
        return f"no MLflow registry yet at {tracking_uri}"
    return None
