"""The platform's resources with their defaults: one place assembles what every
pipeline's assets, sensors and jobs are given (rooted in $MLOPS_HOME unless the
environment names other stores)."""

from __future__ import annotations

import os

import dagster as dg

from mlops_assets.core.home import MlopsHome
from mlops_assets.core.names import MLFLOW_RESOURCE
from resources.delta_lake import DeltaLakeResource
from resources.landing_zone import LandingZoneResource
from resources.mlflow_registry import MlflowRegistryResource, mlflow_resource_for
from resources.serving import ServingResource


def serving_resources(home: MlopsHome | None = None) -> dict:
    if home is None:  # where clients reach the endpoints, for the deployment's metadata (the cluster's ingress)
        return {"serving": ServingResource(public_url=_env_or_default("MLOPS_SERVE_PUBLIC_URL"))}
    return {"serving": ServingResource(tracking_uri=home.mlflow_tracking_uri, delta_root=str(home.delta))}


def model_resources(home: MlopsHome | None = None) -> dict:
    """Resources the model assets need, rooted in `home` (default: $MLOPS_HOME or MLOPS_MLFLOW_* variables)."""
    if home is not None:
        return {MLFLOW_RESOURCE: mlflow_resource_for(home)}
    env = {
        k: dg.EnvVar(v)
        for k, v in (
            ("tracking_uri", "MLOPS_MLFLOW_TRACKING_URI"),
            ("registry_uri", "MLOPS_MLFLOW_REGISTRY_URI"),
            ("artifact_root", "MLOPS_MLFLOW_ARTIFACT_ROOT"),
            ("ui_url", "MLOPS_MLFLOW_UI_URL"),
        )
        if os.environ.get(v)
    }
    return {MLFLOW_RESOURCE: MlflowRegistryResource(**env)}


def _env_or_default(name: str) -> str | dg.EnvVar:
    """EnvVar when set (so the UI shows where a value came from), else the $MLOPS_HOME default."""
    return dg.EnvVar(name) if os.environ.get(name) else ""


def default_resources() -> dict:
    return {
        "landing": LandingZoneResource(root=_env_or_default("MLOPS_LANDING_URI")),
        "delta": DeltaLakeResource(root=_env_or_default("MLOPS_DELTA_URI")),
        **model_resources(),
        **serving_resources(),
    }
