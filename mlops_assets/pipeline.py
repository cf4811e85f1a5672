"""One declared pipeline's definitions: each stage builds its own, this only merges them."""

from __future__ import annotations

import dagster as dg

from mlops_assets import data, deployment, governance, models, monitoring
from mlops_assets.core.declaration import PipelineDeclaration

STAGES = (data, models, monitoring, deployment, governance)


def build_pipeline(decl: PipelineDeclaration) -> dg.Definitions:
    return dg.Definitions.merge(*[stage.build(decl) for stage in STAGES])
