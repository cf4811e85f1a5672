"""Model stage: `<pipeline>/model` (LightGBM, tracked and registered in MLflow) with its blocking
gates, `<pipeline>/promotion`, and the train and approve jobs."""

from __future__ import annotations

import dagster as dg

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.partitions import partitions_def
from mlops_assets.models.assets import build_model_definitions


def build(decl: PipelineDeclaration) -> dg.Definitions:
    return build_model_definitions(decl, partitions_def(decl))
