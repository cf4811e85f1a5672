"""The Dagster partitions a declaration's `partitioning` section stands for."""

from __future__ import annotations

import dagster as dg

from mlops_assets.core.declaration import PipelineDeclaration


def partitions_def(decl: PipelineDeclaration) -> dg.DailyPartitionsDefinition:
    end = decl.partitioning.end
    return dg.DailyPartitionsDefinition(start_date=decl.partitioning.start.isoformat(), end_date=end.isoformat() if end else None)
