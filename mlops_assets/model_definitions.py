"""Training, registry, gates and promotion assets of a declared pipeline (lifecycle steps 4-5)."""

from __future__ import annotations

import dagster as dg

from mlops_assets.declaration import PipelineDeclaration
from mlops_assets.home import MlopsHome


def build_model_definitions(decl: PipelineDeclaration, partitions: dg.PartitionsDefinition) -> dg.Definitions:
    return dg.Definitions()


def model_resources(home: MlopsHome | None = None) -> dict:
    """Resources the model assets need, rooted in `home` (default: $MLOPS_HOME)."""
    return {}
