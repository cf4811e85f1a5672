"""The code location: every declared pipeline plus the shared resources, assembled in one place."""

from __future__ import annotations

import os
from collections.abc import Sequence

import dagster as dg

from mlops_assets.declaration import PipelineDeclaration, load_declarations
from mlops_assets.model_definitions import model_resources
from mlops_assets.pipeline_definitions import build_pipeline
from resources.delta_lake import DeltaLakeResource
from resources.landing_zone import LandingZoneResource
from serving.deployment_definitions import serving_resources


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


def build_definitions(declarations: Sequence[PipelineDeclaration], resources: dict | None = None) -> dg.Definitions:
    return dg.Definitions.merge(
        *[build_pipeline(d) for d in declarations],
        dg.Definitions(resources=resources if resources is not None else default_resources()),
    )


defs = build_definitions(load_declarations())
