"""The `<pipeline>/deployment` asset and the sensor that follows the champion alias."""

from __future__ import annotations

import dagster as dg

from mlops_assets.declaration import PipelineDeclaration
from mlops_assets.home import MlopsHome


def build_serving_definitions(decl: PipelineDeclaration) -> dg.Definitions:
    return dg.Definitions()


def serving_resources(home: MlopsHome | None = None) -> dict:
    return {}
